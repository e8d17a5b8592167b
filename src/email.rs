//! E-mail as an outbox. What is mailed is decided first and written to the store, one row per
//! mail (`mail_outbox`: a kind, a unique dedupe key, recipients, subject, body, an optional
//! CSV, state, attempts, times); a sender then claims the rows one at a time, sends each over
//! SMTP (lettre) and marks it, retrying on `email.retry_schedule`.
//!
//! At a roll call's deadline (every message sent, every deadline passed) HQ's addresses get
//! the phone-call list (a plain-text table, Japanese first, with the CSV attached), and with
//! the scenario's `escalation.email_unconfirmed` each unconfirmed person with an address gets
//! a short reminder. That run is decided only once the receipt watcher has caught up with the
//! platform past the last deadline (or `receipts.catch_up_grace` has run out), so reads still
//! waiting at the platform after a restart are applied first; the HQ mail names the time its
//! list is true at. If the list then changes by more than `email.correction_threshold` people
//! (late reads), HQ gets one correction. Other kinds of mail are new [`kind`]s written to the
//! same outbox.
//!
//! Invariants: mail never holds up a roll call (it is sent from its own task, and a failure
//! only retries and logs); the call list (phone numbers) goes to HQ's addresses only; a mail
//! is written once (its dedupe key) and marked sent once, so a crash sends again at most the
//! one mail in flight, which carries the same Message-ID both times; a reminder goes only to
//! someone whose read or answer was not stored when it was decided.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::clock::{from_millis, Millis, SharedClock, SystemClock};
use crate::config::{Config, EmailConfig};
use crate::escalation::{render_csv, render_table, ListScope};
use crate::ids::RollCallId;
use crate::receipts::FeedPosition;
use crate::rollcall::{RollCall, RollCallState};
use crate::scenario::{Escalation, Scenario};
use crate::store::{SharedStore, StoreError};
use crate::worker::Outcome;

/// What kind of mail an outbox row is; new kinds are new constants here.
pub mod kind {
    /// HQ's call list at a roll call's deadline.
    pub const DEADLINE_HQ: &str = "deadline_hq";
    /// "Not confirmed yet" to one unconfirmed person.
    pub const REMINDER: &str = "reminder";
    /// HQ's list again, once, when it changed by more than `email.correction_threshold`.
    pub const CORRECTION: &str = "correction";
    /// Someone asked for help (an urgent answer): one mail per person and roll call.
    pub const URGENT: &str = "urgent";
    /// An urgent answer that came after its roll call closed, with none open to take it.
    pub const LATE_URGENT: &str = "late_urgent";
    /// The chat platform failing (see [`crate::health`]): one mail per incident.
    pub const PROVIDER_INCIDENT: &str = "provider_incident";
    /// What a JMA telegram did (see [`crate::jma`]): one mail per telegram.
    pub const JMA_NOTICE: &str = "jma_notice";
}

/// Where an outbox row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailState {
    /// Waiting to be sent (first try or a retry).
    Pending,
    /// Claimed by a worker; sent again only if its lease runs out unfinished.
    Sending,
    Sent,
    /// Refused for good, or retries ran out.
    Failed,
}

impl MailState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Sending, Self::Sent, Self::Failed]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// One mail, as decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMail {
    /// One of [`kind`].
    pub kind: String,
    /// Unique: deciding the same mail again writes nothing ("deadline_hq:12",
    /// "reminder:12:S00042").
    pub dedupe_key: String,
    pub roll_call_id: Option<RollCallId>,
    /// Addresses, as the configuration or contacts give them.
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
    /// (file name, bytes) of a CSV attachment.
    pub csv: Option<(String, Vec<u8>)>,
    /// JSON the kind needs later (the list a deadline mail carried).
    pub meta: Option<String>,
}

/// An outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    pub id: i64,
    pub mail: NewMail,
    pub state: MailState,
    /// Including one in progress.
    pub attempts: i64,
    /// Wall clock.
    pub next_attempt_at: Millis,
    /// Wall clock; the claim's identity while sending.
    pub lease_until: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub sent_at: Option<Millis>,
}

/// How one attempt at a mail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailOutcome {
    Sent,
    /// Try again at this wall-clock time.
    Retry {
        at: Millis,
        error: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("email: {0}")]
    Config(String),
    #[error("email could not be built: {0}")]
    Build(String),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

impl EmailError {
    /// Sending it again will not help (a refused address, a message that cannot be built).
    fn is_permanent(&self) -> bool {
        match self {
            Self::Smtp(e) => e.is_permanent(),
            Self::Config(_) | Self::Build(_) => true,
        }
    }
}

/// An SMTP connection setup.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    pub fn new(c: &EmailConfig) -> Result<Self, EmailError> {
        let builder = match c.security.as_str() {
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)?,
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host)?,
            other => return Err(EmailError::Config(format!("unknown security {other:?}"))),
        };
        let mut builder = builder.port(c.port).timeout(Some(c.timeout));
        if !c.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                c.username.clone(),
                c.password.expose().to_string(),
            ));
        }
        let from = c
            .from
            .parse()
            .map_err(|e| EmailError::Config(format!("from {:?}: {e}", c.from)))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    /// The message for an outbox row. Its Message-ID comes from the row, so a mail sent again
    /// after a crash is recognisably the same mail.
    fn build(&self, m: &StoredMail) -> Result<Message, EmailError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(m.mail.subject.clone())
            .message_id(Some(message_id(m)));
        for to in &m.mail.to {
            let to: Mailbox = to
                .parse()
                .map_err(|e| EmailError::Build(format!("address {to:?}: {e}")))?;
            b = b.to(to);
        }
        let text = SinglePart::plain(m.mail.body.clone());
        let msg = match &m.mail.csv {
            Some((name, bytes)) => {
                let ct = ContentType::parse("text/csv; charset=utf-8")
                    .map_err(|e| EmailError::Build(e.to_string()))?;
                b.multipart(
                    MultiPart::mixed()
                        .singlepart(text)
                        .singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct)),
                )
            }
            None => b.singlepart(text),
        };
        msg.map_err(|e| EmailError::Build(e.to_string()))
    }

    /// One attempt at sending an outbox row.
    pub async fn send(&self, m: &StoredMail) -> Result<(), EmailError> {
        let msg = self.build(m)?;
        self.transport.send(msg).await?;
        Ok(())
    }
}

/// `<outbox-<id>-<hash of the dedupe key>@anpi>`.
fn message_id(m: &StoredMail) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.mail.dedupe_key.hash(&mut h);
    format!("<outbox-{}-{:016x}@anpi>", m.id, h.finish())
}

/// A roll call's e-mail settings, stored with it when it starts (the scenario file may change
/// or not exist, e.g. an uploaded scenario).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Plan {
    email_hq: bool,
    email_unconfirmed: bool,
}

/// Roll call e-mail settings as [`NewRollCall::mail_plan`](crate::rollcall::NewRollCall)
/// stores them.
pub fn plan_json(escalation: &Escalation) -> String {
    let plan = Plan {
        email_hq: escalation.email_hq,
        email_unconfirmed: escalation.email_unconfirmed,
    };
    serde_json::to_string(&plan).unwrap_or_default()
}

/// What a roll call needs mailed once it is due: as stored with it, else (a roll call from
/// before plans were stored, or a plan that cannot be read) as its scenario file says today.
fn plan_for(rc: &RollCall, config: &Config) -> Plan {
    if rc.scenario == crate::announcement::SCENARIO_NAME {
        return Plan {
            email_hq: false,
            email_unconfirmed: false,
        };
    }
    if let Some(text) = &rc.mail_plan {
        match serde_json::from_str::<Plan>(text) {
            Ok(p) => return p,
            Err(e) => warn!(roll_call = %rc.id, error = %e,
                "the stored e-mail plan cannot be read; using the scenario file"),
        }
    }
    let e = Scenario::find(&config.scenarios.dir, &rc.scenario)
        .map(|s| s.escalation)
        .unwrap_or_default();
    Plan {
        email_hq: e.email_hq,
        email_unconfirmed: e.email_unconfirmed,
    }
}

/// What a deadline mail to HQ carried, kept with it for the correction check.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Carried {
    /// The list was true at this time (receipts applied up to it).
    true_at: Millis,
    /// Confirmed (read or answered) at that time.
    confirmed: i64,
    /// The staff ids it listed to call.
    to_call: Vec<String>,
}

/// Decides the deadline mails of roll calls and sends the outbox.
#[derive(Debug)]
pub struct EmailWorker {
    store: SharedStore,
    clock: SharedClock,
    /// Retries and claims pace a real SMTP server: wall time, whatever the roll call's clock.
    wall: SharedClock,
    config: Arc<Config>,
    mailer: Mailer,
    hq: Vec<String>,
    /// Told after each escalation (the deadline worker's).
    escalated: Arc<Notify>,
    /// The configured provider and how far its receipts are applied (this process's view).
    provider: String,
    feed: Arc<FeedPosition>,
    /// Roll calls whose deadline mail is decided, and whose correction is settled.
    decided: Mutex<HashSet<RollCallId>>,
    corrected: Mutex<HashSet<RollCallId>>,
    /// Per roll call, how many people had answered urgently when their mails were last
    /// written (the count only grows, so an unchanged count needs no look at the list).
    urgent_seen: Mutex<HashMap<RollCallId, i64>>,
    /// Late answers whose mail is written.
    late_seen: Mutex<HashSet<i64>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl EmailWorker {
    /// `None` when e-mail is off.
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        config: Arc<Config>,
        escalated: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Self>, EmailError> {
        if !config.email.enabled {
            return Ok(None);
        }
        let mailer = Mailer::new(&config.email)?;
        for a in &config.email.hq {
            a.parse::<Mailbox>()
                .map_err(|e| EmailError::Config(format!("hq {a:?}: {e}")))?;
        }
        Ok(Some(Self {
            store,
            clock,
            wall: Arc::new(SystemClock),
            hq: config.email.hq.clone(),
            config,
            mailer,
            escalated,
            provider: String::new(),
            feed: Arc::default(),
            decided: Mutex::default(),
            corrected: Mutex::default(),
            urgent_seen: Mutex::default(),
            late_seen: Mutex::default(),
            metrics,
        }))
    }

    /// Waits for `provider`'s receipts as this process's watcher applies them.
    pub fn with_feed(mut self, provider: &str, feed: Arc<FeedPosition>) -> Self {
        self.provider = provider.to_string();
        self.feed = feed;
        self
    }

    /// How far roll call `rc`'s provider's receipts are applied.
    async fn caught_up(&self, rc: &RollCall) -> Result<Option<Millis>, StoreError> {
        if rc.provider == self.provider {
            self.feed.known(&self.store, &rc.provider).await
        } else {
            self.store.caught_up(&rc.provider).await
        }
    }

    /// Writes the deadline mails of every open roll call whose deadlines have all passed and
    /// whose receipts are applied past them, and a correction where a mailed list has
    /// changed by more than the threshold. Returns how many roll calls got mail decided.
    pub async fn decide_once(&self) -> Result<Outcome, StoreError> {
        let mut decided = self.late_urgent_mails().await?;
        for rc in self.store.roll_calls().await? {
            if rc.state != RollCallState::Open {
                continue;
            }
            let progress = self.store.progress(rc.id).await?;
            decided += self.urgent_mails(&rc, &progress).await?;
            let known = self
                .decided
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&rc.id);
            if known {
                self.check_correction(&rc).await?;
                continue;
            }
            if self.store.mail_decided(rc.id).await?.is_some() {
                self.decided
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(rc.id);
                continue;
            }
            if self.decide(&rc, progress).await? {
                decided += 1;
            }
        }
        Ok(if decided == 0 {
            Outcome::Idle
        } else {
            Outcome::Worked(decided)
        })
    }

    /// Writes HQ one mail for each person in roll call `rc` who asked for help (an urgent
    /// answer HQ has not closed), without waiting for the deadline; one per person and roll
    /// call, whatever they send after. Returns how many were written.
    async fn urgent_mails(
        &self,
        rc: &RollCall,
        progress: &crate::rollcall::Progress,
    ) -> Result<u64, StoreError> {
        if self.hq.is_empty() {
            return Ok(0);
        }
        let urgent = progress.overall.answered_urgent;
        let seen = self
            .urgent_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&rc.id)
            .copied();
        if urgent == 0 || seen == Some(urgent) {
            return Ok(0);
        }
        let tz = self.config.zone().unwrap_or(chrono_tz::Asia::Tokyo);
        let mails: Vec<NewMail> = self
            .store
            .call_list(rc.id)
            .await?
            .iter()
            .filter(|e| e.urgent_open())
            .map(|e| NewMail {
                kind: kind::URGENT.into(),
                dedupe_key: format!("{}:{}:{}", kind::URGENT, rc.id, e.staff_id),
                roll_call_id: Some(rc.id),
                to: self.hq.clone(),
                subject: urgent_subject(rc, &e.name, place_of(e), e.standing.as_ref()),
                body: urgent_text(rc, e, tz),
                csv: None,
                meta: None,
            })
            .collect();
        let now = self.clock.now_millis();
        let new = self
            .store
            .enqueue_mails(&mails, now, self.wall.now_millis())
            .await?;
        if new > 0 {
            info!(roll_call = %rc.id, new, "urgent answers mailed to HQ");
        }
        self.urgent_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rc.id, urgent);
        Ok(new as u64)
    }

    /// Writes HQ one mail for each urgent answer that came after its roll call closed, with
    /// none open to take it, unless that answer was already mailed while the roll call was
    /// open (one carried over at the close).
    async fn late_urgent_mails(&self) -> Result<u64, StoreError> {
        if self.hq.is_empty() {
            return Ok(0);
        }
        let tz = self.config.zone().unwrap_or(chrono_tz::Asia::Tokyo);
        let mut mails = Vec::new();
        for l in self.store.late_answers(true).await? {
            if l.answer.level != crate::answers::AnswerLevel::Urgent
                || self
                    .late_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&l.id)
            {
                continue;
            }
            let earlier = format!("{}:{}:{}", kind::URGENT, l.roll_call_id, l.staff_id);
            let mailed = self
                .store
                .mail_by_key(&earlier)
                .await?
                .is_some_and(|m| m.created_at >= l.answer.at);
            if !mailed {
                mails.push(NewMail {
                    kind: kind::LATE_URGENT.into(),
                    dedupe_key: format!("{}:{}", kind::LATE_URGENT, l.id),
                    roll_call_id: Some(l.roll_call_id),
                    to: self.hq.clone(),
                    subject: urgent_subject_late(&l),
                    body: late_urgent_text(&l, tz),
                    csv: None,
                    meta: None,
                });
            }
            self.late_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(l.id);
        }
        if mails.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now_millis();
        let new = self
            .store
            .enqueue_mails(&mails, now, self.wall.now_millis())
            .await?;
        info!(new, "urgent answers after a close mailed to HQ");
        Ok(new as u64)
    }

    /// Decides roll call `rc`'s deadline mail if it is due. True when it was written.
    async fn decide(
        &self,
        rc: &RollCall,
        p: crate::rollcall::Progress,
    ) -> Result<bool, StoreError> {
        let c = &p.overall;
        // Due once every deadline has passed, when anyone is on the action list.
        let all_passed = (c.escalated > 0 || c.answered_urgent > 0)
            && c.pending == 0
            && c.sending == 0
            && p.next_deadline_at.is_none();
        if !all_passed {
            return Ok(false);
        }
        // Every deadline has passed by here; the list is built from receipts applied past it.
        let due_at = p.last_sent_at.map_or(rc.created_at, |t| t + rc.deadline_ms);
        let now = self.clock.now_millis();
        let caught = self.caught_up(rc).await?;
        let grace = self.config.receipts.catch_up_grace.as_millis() as i64;
        let (true_at, behind) = match caught {
            Some(at) if at >= due_at => (at.min(now), false),
            _ if now - due_at >= grace => (caught.unwrap_or(now).min(now), true),
            _ => {
                // Receipts may still be waiting at the platform: have them fetched now.
                self.feed.catch_up.notify_one();
                return Ok(false);
            }
        };
        if behind {
            warn!(roll_call = %rc.id, "the receipt feed is behind past the grace; mailing the list as stored");
        }
        // Read after the feed caught up: every read and answer stored by then is in it.
        let p = self.store.progress(rc.id).await?;
        let entries = self.store.call_list(rc.id).await?;
        let plan = plan_for(rc, &self.config);
        let tz = self.config.zone().unwrap_or(chrono_tz::Asia::Tokyo);
        let mut mails = Vec::new();
        if plan.email_hq && !self.hq.is_empty() {
            let to_call: Vec<String> = entries
                .iter()
                .filter(|e| e.to_call())
                .map(|e| e.staff_id.to_string())
                .collect();
            let carried = Carried {
                true_at,
                confirmed: p.overall.confirmed(),
                to_call,
            };
            let at = clock_text(true_at, tz);
            mails.push(NewMail {
                kind: kind::DEADLINE_HQ.into(),
                dedupe_key: format!("{}:{}", kind::DEADLINE_HQ, rc.id),
                roll_call_id: Some(rc.id),
                to: self.hq.clone(),
                subject: format!(
                    "【安否確認】{} #{} 要対応 {}名 / {} to act on ({at} 時点)",
                    rc.title,
                    rc.id,
                    carried.to_call.len(),
                    carried.to_call.len()
                ),
                body: hq_text(
                    rc,
                    &p,
                    &render_table(&entries, ListScope::ToCall, true_at, tz),
                    &at,
                    behind,
                ),
                csv: Some((
                    format!("anpi-{}-call-list.csv", rc.id),
                    render_csv(&entries, ListScope::ToCall, true_at, tz),
                )),
                meta: serde_json::to_string(&carried).ok(),
            });
        }
        if plan.email_unconfirmed {
            let addresses: HashMap<_, _> = self
                .store
                .contacts()
                .await?
                .into_iter()
                .filter_map(|c| Some((c.id, c.email?)))
                .collect();
            // Only people not confirmed in chat: someone who answered (even asking for
            // help) has seen the message.
            for e in entries.iter().filter(|e| {
                e.action()
                    .is_some_and(|a| a != crate::rollcall::Action::Urgent)
            }) {
                let Some(addr) = addresses.get(&e.staff_id) else {
                    continue;
                };
                mails.push(NewMail {
                    kind: kind::REMINDER.into(),
                    dedupe_key: format!("{}:{}:{}", kind::REMINDER, rc.id, e.staff_id),
                    roll_call_id: Some(rc.id),
                    to: vec![addr.to_string()],
                    subject: format!("【安否確認】{}: 未確認です / not confirmed", rc.title),
                    body: unconfirmed_text(rc),
                    csv: None,
                    meta: None,
                });
            }
        }
        let what = format!("decided: {} mails, list true at {true_at}", mails.len());
        let new = self
            .store
            .decide_mails(rc.id, &mails, &what, now, self.wall.now_millis())
            .await?;
        self.decided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rc.id);
        info!(roll_call = %rc.id, mails = mails.len(), new, true_at, "deadline mail decided");
        Ok(true)
    }

    /// Writes HQ one correction when the list its deadline mail carried has since changed by
    /// more than `email.correction_threshold` people (read late, or newly to call).
    async fn check_correction(&self, rc: &RollCall) -> Result<(), StoreError> {
        let settled = |this: &Self| {
            this.corrected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rc.id);
        };
        if self
            .corrected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&rc.id)
        {
            return Ok(());
        }
        let Some(first) = self
            .store
            .mail_by_key(&format!("{}:{}", kind::DEADLINE_HQ, rc.id))
            .await?
        else {
            settled(self);
            return Ok(());
        };
        if first.state != MailState::Sent {
            // Not out yet (or given up): nothing to correct.
            if first.state == MailState::Failed {
                settled(self);
            }
            return Ok(());
        }
        let correction_key = format!("{}:{}", kind::CORRECTION, rc.id);
        if self.store.mail_by_key(&correction_key).await?.is_some() {
            settled(self);
            return Ok(());
        }
        let Some(carried) = first
            .mail
            .meta
            .as_deref()
            .and_then(|m| serde_json::from_str::<Carried>(m).ok())
        else {
            settled(self);
            return Ok(());
        };
        let threshold = self.config.email.correction_threshold as i64;
        // Cheap first: after the deadline a list only changes by late reads, which the
        // confirmed count shows.
        let p = self.store.progress(rc.id).await?;
        if p.overall.confirmed() - carried.confirmed <= threshold {
            return Ok(());
        }
        let entries = self.store.call_list(rc.id).await?;
        let mailed: HashSet<&str> = carried.to_call.iter().map(String::as_str).collect();
        let now_to_call: HashSet<&str> = entries
            .iter()
            .filter(|e| e.to_call())
            .map(|e| e.staff_id.as_str())
            .collect();
        let read_since: Vec<&str> = entries
            .iter()
            .filter(|e| mailed.contains(e.staff_id.as_str()) && e.state.is_confirmed())
            .map(|e| e.staff_id.as_str())
            .collect();
        let added = now_to_call.difference(&mailed).count();
        let changed = read_since.len() + added;
        if changed as i64 <= threshold {
            return Ok(());
        }
        let now = self.clock.now_millis();
        let true_at = self.caught_up(rc).await?.unwrap_or(now).min(now);
        let tz = self.config.zone().unwrap_or(chrono_tz::Asia::Tokyo);
        let (before, at) = (clock_text(carried.true_at, tz), clock_text(true_at, tz));
        let mail = NewMail {
            kind: kind::CORRECTION.into(),
            dedupe_key: correction_key,
            roll_call_id: Some(rc.id),
            to: self.hq.clone(),
            subject: format!(
                "【安否確認】訂正 {} #{} 要対応 {}名 / correction: {} to act on ({at} 時点)",
                rc.title,
                rc.id,
                now_to_call.len(),
                now_to_call.len()
            ),
            body: correction_text(
                rc,
                &before,
                carried.to_call.len(),
                &at,
                read_since.len(),
                added,
                &render_table(&entries, ListScope::ToCall, true_at, tz),
            ),
            csv: Some((
                format!("anpi-{}-call-list-{}.csv", rc.id, at.replace(':', "")),
                render_csv(&entries, ListScope::ToCall, true_at, tz),
            )),
            meta: None,
        };
        self.store
            .enqueue_mails(&[mail], now, self.wall.now_millis())
            .await?;
        info!(roll_call = %rc.id, changed, "the mailed call list changed; correction written");
        settled(self);
        Ok(())
    }

    /// Claims the next due mail, sends it and marks it. `Idle` when none is due.
    pub async fn send_once(&self) -> Result<Outcome, StoreError> {
        let wall = self.wall.now_millis();
        let lease = self.config.email.timeout * 2 + Duration::from_secs(5);
        let lease_until = wall + lease.as_millis() as i64;
        let Some(m) = self.store.claim_mail(wall, lease_until).await? else {
            return Ok(Outcome::Idle);
        };
        let span = info_span!("email", id = m.id, kind = %m.mail.kind, key = %m.mail.dedupe_key);
        let res = self.mailer.send(&m).instrument(span.clone()).await;
        let schedule = &self.config.email.retry_schedule;
        let outcome = match res {
            Ok(()) => MailOutcome::Sent,
            Err(e) if e.is_permanent() => MailOutcome::Failed {
                error: e.to_string(),
            },
            Err(e) if m.attempts as usize > schedule.len() => MailOutcome::Failed {
                error: format!("gave up after {} attempts: {e}", m.attempts),
            },
            Err(e) => {
                let base = schedule[(m.attempts.max(1) as usize - 1).min(schedule.len() - 1)];
                let wait = base.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
                MailOutcome::Retry {
                    at: self.wall.now_millis() + wait.as_millis() as i64,
                    error: e.to_string(),
                }
            }
        };
        let _enter = span.enter();
        match &outcome {
            MailOutcome::Sent => self.metrics.email(true),
            MailOutcome::Failed { error } => {
                self.metrics.email(false);
                warn!(%error, subject = %m.mail.subject, "e-mail given up");
            }
            MailOutcome::Retry { error, .. } => {
                warn!(%error, attempt = m.attempts, "e-mail not sent; retrying")
            }
        }
        drop(_enter);
        // The mail is out: record it while the claim holds, even through a database blip,
        // rather than have it sent again.
        let mut failures = 0u32;
        loop {
            match self
                .store
                .finish_mail(m.id, lease_until, &outcome, self.clock.now_millis())
                .await
            {
                Ok(_) => break,
                Err(e) if failures < 20 && self.wall.now_millis() < lease_until - 1_000 => {
                    failures += 1;
                    self.metrics.store_error();
                    warn!(error = %e, "could not mark the e-mail; retrying");
                    tokio::time::sleep(crate::backoff::HOLDING_WORK.wait(failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Outcome::Worked(1))
    }

    /// Decides at each escalation, each move of the receipt feed and every
    /// `email.check_interval`, and sends whatever is due, one mail at a time, until `cancel`
    /// fires (a mail being sent is finished first).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut feed_moved = self.feed.subscribe();
        while !cancel.is_cancelled() {
            let escalated = self.escalated.notified();
            tokio::pin!(escalated);
            escalated.as_mut().enable();
            if let Err(e) = self.decide_once().await {
                self.metrics.store_error();
                warn!(error = %e, "e-mail check failed; retrying");
            }
            while !cancel.is_cancelled() {
                match self.send_once().await {
                    Ok(Outcome::Worked(_)) => {}
                    Ok(Outcome::Idle) => break,
                    Err(e) => {
                        self.metrics.store_error();
                        warn!(error = %e, "e-mail outbox failed; retrying");
                        break;
                    }
                }
            }
            let mut wait = self.config.email.check_interval;
            if let Ok(Some(due)) = self.store.next_mail_due().await {
                let until = Duration::from_millis((due - self.wall.now_millis()).max(10) as u64);
                wait = wait.min(until);
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = &mut escalated => {}
                _ = feed_moved.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// `HH:MM:SS` in the configured zone.
fn clock_text(t: Millis, tz: chrono_tz::Tz) -> String {
    from_millis(t)
        .with_timezone(&tz)
        .format("%H:%M:%S")
        .to_string()
}

fn hq_text(
    rc: &RollCall,
    p: &crate::rollcall::Progress,
    table: &str,
    at: &str,
    behind: bool,
) -> String {
    let c = &p.overall;
    let late_ja = if behind {
        "（チャットからの既読の受信が遅れています。この時刻より後の既読は反映されていません）\n"
    } else {
        ""
    };
    let late_en = if behind {
        " The chat platform's receipts are behind: reads after that time are not in it."
    } else {
        ""
    };
    format!(
        "{title}（#{id}）の期限が過ぎました。下の人に電話で確認してください。\n\
         この一覧は {at} 時点の既読・回答を反映しています。\n\
         {late_ja}\
         対象 {total}名 / 確認済み {confirmed}名 / 要対応 {to_call}名\
         （助けを求める回答 {urgent_open}名・未確認 {unconfirmed}名）\n\
         チャットの回答: 問題なし {ok}名 / 要確認 {attention}名 / 要対応 {urgent}名\n\
         電話対応済み {reached}名（うち負傷 {injured} / 要救助 {needs_help} / 不通 {unreachable}）\n\
         \n\
         {table}\n\
         同じ一覧を CSV で添付しています（Excel で開けます）。電話の結果は HQ 画面か\n\
         `anpi call` で記録してください。\n\
         \n\
         Deadline passed for roll call #{id} ({title}). Please call the people above.\n\
         This list reflects reads and answers up to {at}.{late_en}\n\
         Recipients {total}, confirmed {confirmed}, for HQ to act on {to_call} (asked for help \
         {urgent_open}, not confirmed {unconfirmed}). Chat answers: ok {ok}, attention \
         {attention}, urgent {urgent}. Closed by phone {reached} (injured {injured}, needs help \
         {needs_help}, unreachable {unreachable}).\n\
         The same list is attached as CSV. Record call outcomes on the HQ page or with `anpi call`.\n",
        title = rc.title,
        id = rc.id,
        total = c.total,
        confirmed = c.confirmed(),
        to_call = c.to_call + c.urgent_open,
        urgent_open = c.urgent_open,
        unconfirmed = c.to_call,
        ok = c.answered_ok,
        attention = c.answered_attention,
        urgent = c.answered_urgent,
        reached = c.reached,
        injured = c.injured,
        needs_help = c.needs_help,
        unreachable = c.unreachable,
    )
}

fn correction_text(
    rc: &RollCall,
    before: &str,
    mailed: usize,
    at: &str,
    read_since: usize,
    added: usize,
    table: &str,
) -> String {
    format!(
        "{title}（#{id}）の電話一覧の訂正です。{before} 時点の一覧（要電話 {mailed}名）のうち \
         {read_since}名がその後確認できました{added_ja}。\n\
         最新の一覧（{at} 時点）:\n\
         \n\
         {table}\n\
         Correction for roll call #{id} ({title}): of the {mailed} people to call as of {before}, \
         {read_since} have since confirmed{added_en}. The list as of {at} is above and attached.\n",
        title = rc.title,
        id = rc.id,
        added_ja = if added > 0 {
            format!("（新たに要電話 {added}名）")
        } else {
            String::new()
        },
        added_en = if added > 0 {
            format!(" ({added} newly to call)")
        } else {
            String::new()
        },
    )
}

fn unconfirmed_text(rc: &RollCall) -> String {
    format!(
        "{title}: あなたの安否がまだ確認できていません。チャットのメッセージを開くか、\n\
         ボタンを1つ押してください。難しい場合は本部から電話します。\n\
         \n\
         {title}: your safety check is not confirmed yet. Open the chat message or tap one\n\
         button. If you cannot, HQ will call you.\n",
        title = rc.title
    )
}

/// Where a person belongs: department, and shelter when assigned to one.
fn place_of(e: &crate::rollcall::CallListEntry) -> String {
    match (&e.department, &e.shelter) {
        (Some(d), Some(s)) => format!("{d}・{s}"),
        (Some(d), None) => d.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => String::new(),
    }
}

/// Mail about a drill says so first, so nobody mistakes it for a real request for help.
fn drill_mark(rc: &RollCall) -> &'static str {
    if rc.drill {
        "【訓練 / drill】"
    } else {
        ""
    }
}

fn urgent_subject(
    rc: &RollCall,
    name: &str,
    place: String,
    answer: Option<&crate::rollcall::GivenAnswer>,
) -> String {
    let what = answer.map_or("要対応", |a| a.label.as_str());
    let place = if place.is_empty() {
        String::new()
    } else {
        format!("（{place}）")
    };
    format!(
        "{}【安否確認・要対応】{what}: {name}{place} {} #{} / urgent",
        drill_mark(rc),
        rc.title,
        rc.id
    )
}

fn answer_lines(a: &crate::rollcall::GivenAnswer, tz: chrono_tz::Tz) -> String {
    let mut out = format!("回答 / answer: {}（{}）\n", a.label, clock_text(a.at, tz));
    if let Some(t) = &a.text {
        out.push_str(&format!("本文 / text: 「{t}」\n"));
    }
    out
}

fn phone_lines(phones: &[String]) -> String {
    if phones.is_empty() {
        return "電話 / phone: (登録なし / none)\n".to_string();
    }
    let list: Vec<String> = phones
        .iter()
        .map(|p| crate::calllist::national(p))
        .collect();
    format!("電話 / phone: {}\n", list.join(" / "))
}

fn person_lines(
    name: &str,
    kana: Option<&str>,
    role: Option<&str>,
    department: Option<&str>,
    shelter: Option<&str>,
    staff: &str,
) -> String {
    let mut out = format!("氏名 / name: {name}");
    if let Some(k) = kana {
        out.push_str(&format!("（{k}）"));
    }
    out.push_str(&format!("  職員ID: {staff}\n"));
    if let Some(r) = role {
        out.push_str(&format!("役職 / role: {r}\n"));
    }
    if let Some(d) = department {
        out.push_str(&format!("所属 / department: {d}\n"));
    }
    if let Some(s) = shelter {
        out.push_str(&format!("避難所 / shelter: {s}\n"));
    }
    out
}

/// One person who asked for help: who, what they sent, how to reach them.
fn urgent_text(rc: &RollCall, e: &crate::rollcall::CallListEntry, tz: chrono_tz::Tz) -> String {
    let mut out = format!(
        "{mark}{title}（#{id}）で助けを求める回答がありました。すぐに対応してください。\n\n",
        mark = drill_mark(rc),
        title = rc.title,
        id = rc.id
    );
    out.push_str(&person_lines(
        &e.name,
        e.kana.as_deref(),
        e.role.as_deref(),
        e.department.as_deref(),
        e.shelter.as_deref(),
        e.staff_id.as_str(),
    ));
    if let Some(a) = &e.standing {
        out.push_str(&answer_lines(a, tz));
    }
    if let Some(l) = e
        .latest
        .as_ref()
        .filter(|l| Some(*l) != e.standing.as_ref())
    {
        out.push_str("最新 / latest:\n");
        out.push_str(&answer_lines(l, tz));
    }
    out.push_str(&phone_lines(&e.phones));
    out.push_str(&format!(
        "\n対応の結果とメモは HQ 画面か `anpi call {staff} --outcome ... --note ...` で記録してください。\n\
         Someone asked for help in roll call #{id} ({title}). Record what HQ did on the HQ page or \
         with `anpi call`.\n",
        staff = e.staff_id,
        id = rc.id,
        title = rc.title
    ));
    out
}

fn urgent_subject_late(l: &crate::rollcall::LateAnswer) -> String {
    format!(
        "【安否確認・要対応】終了後の回答 {}: {} #{} / urgent, after the close",
        l.answer.label, l.name, l.roll_call_id
    )
}

/// An urgent answer to a roll call already closed, with none open.
fn late_urgent_text(l: &crate::rollcall::LateAnswer, tz: chrono_tz::Tz) -> String {
    let mut out = format!(
        "終了した安否確認（#{id}）に、助けを求める回答が届きました。開いている安否確認が\n\
         ないため、HQ 画面の「終了後の回答」と `anpi late list` に出ています。\n\n",
        id = l.roll_call_id
    );
    out.push_str(&person_lines(
        &l.name,
        l.kana.as_deref(),
        None,
        l.department.as_deref(),
        l.shelter.as_deref(),
        l.staff_id.as_str(),
    ));
    out.push_str(&answer_lines(&l.answer, tz));
    out.push_str(&phone_lines(&l.phones));
    out.push_str(&format!(
        "\n対応したら `anpi late close {lid} --note ...` か HQ 画面で閉じてください。\n\
         An urgent answer came after roll call #{id} closed. Close it on the HQ page or with \
         `anpi late close {lid}` once handled.\n",
        lid = l.id,
        id = l.roll_call_id
    ));
    out
}
