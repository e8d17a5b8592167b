//! Roll calls and their deliveries: the domain types, the delivery state machine, and how a
//! roll call is created from a scenario and the contacts.
//!
//! Invariants: a delivery's progress only moves forward (`pending < sending < sent < read <
//! answered`; a read never becomes unread); escalation and call outcomes are recorded beside
//! the progress, never instead of it, so a late read after escalation still shows as read and
//! takes the person off the list still to call.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::answers::{AnswerLevel, Choice};
use crate::clock::Millis;
use crate::contacts::{Contact, ContactKind};
use crate::ids::{ChatHandle, RollCallId, StaffId};
use crate::providers::AnswerButton;
use crate::scenario::{Asks, Scenario};

/// How far a message has come. Ordered: a later state never returns to an earlier one,
/// except `sending -> pending` when a retryable send failed (the message did not go out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Sending,
    Sent,
    Read,
    Answered,
    /// The provider refused for good (unknown user, disabled account) or retries ran out.
    Failed,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 6] = [
        Self::Pending,
        Self::Sending,
        Self::Sent,
        Self::Read,
        Self::Answered,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Read => "read",
            Self::Answered => "answered",
            Self::Failed => "failed",
        }
    }

    /// Read or answered: the person has seen the message.
    pub fn is_confirmed(self) -> bool {
        matches!(self, Self::Read | Self::Answered)
    }

    /// The state after `event`, from [`TRANSITIONS`]: a pair the table does not list leaves
    /// the state as it is.
    pub fn after(self, event: DeliveryEvent) -> Self {
        TRANSITIONS
            .iter()
            .find(|(from, e, _)| *from == self && *e == event)
            .map_or(self, |(_, _, to)| *to)
    }
}

/// What can happen to a delivery. Each is written by one store operation; the state it
/// leaves is [`TRANSITIONS`]' (the store's SQL is built from that table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryEvent {
    /// A dispatcher claims it to send: due and unsent, or an earlier claim's lease ran out.
    Claimed,
    /// The platform accepted the message.
    Accepted,
    /// A send failed in a way worth retrying (only while the claim that sent it holds).
    Retried,
    /// The platform refused for good, or retries ran out.
    Refused,
    /// A read receipt.
    Read,
    /// An answer: button, reply, sticker, reaction.
    Answered,
    /// HQ closed the roll call.
    Closed,
}

impl DeliveryEvent {
    pub const ALL: [DeliveryEvent; 7] = [
        Self::Claimed,
        Self::Accepted,
        Self::Retried,
        Self::Refused,
        Self::Read,
        Self::Answered,
        Self::Closed,
    ];
}

/// The delivery state machine, whole: `(from, event, to)`. Progress only moves forward,
/// except `sending -> pending` when a send is retried (the message did not go out). A read
/// of a message whose send was reported failed still proves the person saw it; an answer
/// is the furthest state; closing fails what never went out. Anything not listed (a late
/// "accepted" after a read, a read after an answer, ...) changes nothing.
pub const TRANSITIONS: &[(DeliveryState, DeliveryEvent, DeliveryState)] = {
    use DeliveryEvent as E;
    use DeliveryState as S;
    &[
        (S::Pending, E::Claimed, S::Sending),
        (S::Sending, E::Claimed, S::Sending),
        (S::Sending, E::Accepted, S::Sent),
        (S::Sending, E::Retried, S::Pending),
        (S::Sending, E::Refused, S::Failed),
        (S::Pending, E::Read, S::Read),
        (S::Sending, E::Read, S::Read),
        (S::Sent, E::Read, S::Read),
        (S::Failed, E::Read, S::Read),
        (S::Pending, E::Answered, S::Answered),
        (S::Sending, E::Answered, S::Answered),
        (S::Sent, E::Answered, S::Answered),
        (S::Read, E::Answered, S::Answered),
        (S::Failed, E::Answered, S::Answered),
        (S::Pending, E::Closed, S::Failed),
        (S::Sending, E::Closed, S::Failed),
    ]
};

/// The states `event` moves (changes or, for a claim taken over, renews), as an SQL list:
/// `('pending', 'sending')`.
pub fn states_moved_sql(event: DeliveryEvent) -> String {
    let states: Vec<String> = TRANSITIONS
        .iter()
        .filter(|(_, e, _)| *e == event)
        .map(|(from, _, _)| format!("'{from}'"))
        .collect();
    format!("({})", states.join(", "))
}

/// The new state after `event` as an SQL expression over the state column `column`:
/// `CASE column WHEN 'sending' THEN 'sent' ... ELSE column END`.
pub fn state_after_sql(event: DeliveryEvent, column: &str) -> String {
    let arms: String = TRANSITIONS
        .iter()
        .filter(|(from, e, to)| *e == event && from != to)
        .map(|(from, _, to)| format!(" WHEN '{from}' THEN '{to}'"))
        .collect();
    format!("CASE {column}{arms} ELSE {column} END")
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown delivery state {s:?}"))
    }
}

/// Why a person is on the phone-call list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// The deadline passed after the message went out, and nobody read it.
    NeverRead,
    /// The chat platform refused the message for good.
    SendFailed,
    /// The person has no id on the roll call's chat platform.
    NoChatId,
}

impl EscalationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeverRead => "never_read",
            Self::SendFailed => "send_failed",
            Self::NoChatId => "no_chat_id",
        }
    }

    /// How HQ reads it, Japanese first.
    pub fn label(self) -> &'static str {
        match self {
            Self::NeverRead => "未読 / never read",
            Self::SendFailed => "送信失敗 / send failed",
            Self::NoChatId => "チャット未登録 / no chat id",
        }
    }
}

impl FromStr for EscalationReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::NeverRead, Self::SendFailed, Self::NoChatId]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown escalation reason {s:?}"))
    }
}

/// What HQ learned by phone. A proxy answer: recorded with who called and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    ReachedSafe,
    ReachedInjured,
    ReachedNeedsHelp,
    NoAnswer,
    Unreachable,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 5] = [
        Self::ReachedSafe,
        Self::ReachedInjured,
        Self::ReachedNeedsHelp,
        Self::NoAnswer,
        Self::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReachedSafe => "reached_safe",
            Self::ReachedInjured => "reached_injured",
            Self::ReachedNeedsHelp => "reached_needs_help",
            Self::NoAnswer => "no_answer",
            Self::Unreachable => "unreachable",
        }
    }

    /// Accepts the stored names and the short CLI forms (`safe`, `injured`, `needs-help`,
    /// `no-answer`, `unreachable`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let found = match norm.as_str() {
            "safe" | "reached_safe" => Some(Self::ReachedSafe),
            "injured" | "reached_injured" => Some(Self::ReachedInjured),
            "needs_help" | "reached_needs_help" => Some(Self::ReachedNeedsHelp),
            "no_answer" => Some(Self::NoAnswer),
            "unreachable" => Some(Self::Unreachable),
            _ => None,
        };
        found.ok_or_else(|| {
            format!(
                "unknown call outcome {s:?}: use safe, injured, needs-help, no-answer or unreachable"
            )
        })
    }

    /// No answer means: call again later. Every other outcome closes the entry.
    pub fn closes_entry(self) -> bool {
        !matches!(self, Self::NoAnswer)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::ReachedSafe => "電話で無事確認 / reached: safe",
            Self::ReachedInjured => "電話で負傷確認 / reached: injured",
            Self::ReachedNeedsHelp => "要救助 / reached: needs help",
            Self::NoAnswer => "不在 / no answer",
            Self::Unreachable => "不通 / unreachable",
        }
    }
}

impl FromStr for CallOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Open while messages go out and answers come in; closed by HQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollCallState {
    Open,
    Closed,
}

impl RollCallState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A roll call as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollCall {
    pub id: RollCallId,
    pub scenario: String,
    pub title: String,
    /// The scenario's message as it went to staff; what it asks people to do is added per
    /// route from `asks`.
    pub message: String,
    /// The staff's answer choices, each with its level.
    pub buttons: Vec<Choice>,
    /// What shelter phones were given instead.
    pub shelter_buttons: Vec<Choice>,
    pub drill: bool,
    pub deadline_ms: i64,
    pub provider: String,
    pub state: RollCallState,
    pub created_at: Millis,
    pub closed_at: Option<Millis>,
    pub recipients: i64,
    /// The chat message goes again, once, to whoever has not read it this long after their
    /// first send (the scenario's `escalation.resend_after`).
    #[serde(default)]
    pub resend_after_ms: Option<i64>,
    /// What the message asks people to do, per route; the text sent on a route is
    /// `asks.compose(message, route, buttons)`.
    #[serde(default)]
    pub asks: Asks,
    /// The route chosen to reach the audience (JSON of [`crate::planner::Plan`]); `None`
    /// until one is chosen.
    #[serde(skip)]
    pub dispatch_plan: Option<String>,
    /// What the roll call mails at its deadline (JSON, see [`crate::email`]); `None` for roll
    /// calls that predate it (their scenario file decides).
    #[serde(skip)]
    pub mail_plan: Option<String>,
}

impl RollCall {
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.max(0) as u64)
    }

    /// The choices a recipient of this kind was given.
    pub fn choices_for(&self, kind: ContactKind) -> &[Choice] {
        match kind {
            ContactKind::ShelterPhone => &self.shelter_buttons,
            ContactKind::Staff => &self.buttons,
        }
    }

    /// The buttons a recipient of this kind is sent.
    pub fn buttons_for(&self, kind: ContactKind) -> Vec<AnswerButton> {
        crate::answers::buttons(self.choices_for(kind))
    }
}

/// What is written when a roll call is started.
#[derive(Debug, Clone)]
pub struct NewRollCall {
    pub scenario: String,
    pub title: String,
    pub message: String,
    pub buttons: Vec<Choice>,
    pub shelter_buttons: Vec<Choice>,
    pub drill: bool,
    pub deadline_ms: i64,
    pub provider: String,
    /// A repeated start with the same key returns the first roll call.
    pub idempotency_key: Option<String>,
    pub resend_after_ms: Option<i64>,
    pub asks: Asks,
    /// Written with the roll call, in its transaction (see [`RollCall::dispatch_plan`]).
    pub dispatch_plan: Option<String>,
    pub mail_plan: Option<String>,
}

/// One recipient, snapshotted at start so the record stands even if contacts change later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDelivery {
    pub staff_id: StaffId,
    pub name: String,
    /// ふりがな, so a caller can say the name.
    #[serde(default)]
    pub kana: Option<String>,
    /// 役職.
    #[serde(default)]
    pub role: Option<String>,
    pub department: Option<String>,
    pub shelter: Option<String>,
    pub kind: ContactKind,
    pub call_priority: u8,
    /// E.164 numbers, primary first.
    pub phones: Vec<String>,
    pub email: Option<String>,
    /// None: the person has no id on this provider and goes straight to the call list.
    pub chat_handle: Option<ChatHandle>,
}

/// A contact a roll call is composed from, borrowed or owned. An owned one is dropped as soon
/// as its delivery row is made, so a roll call of a whole city never holds the directory and
/// all its rows at once.
pub trait AudienceMember {
    fn contact(&self) -> &Contact;
    fn into_delivery(self, provider: &str) -> NewDelivery;
}

impl AudienceMember for &Contact {
    fn contact(&self) -> &Contact {
        self
    }

    fn into_delivery(self, provider: &str) -> NewDelivery {
        NewDelivery::from_contact(self, provider)
    }
}

impl AudienceMember for Contact {
    fn contact(&self) -> &Contact {
        self
    }

    fn into_delivery(self, provider: &str) -> NewDelivery {
        // Copied, not moved: the copies are made one after the other, so the rows written
        // next are read from contiguous memory (moving left every field where the parser had
        // put it, between the contact's other fields, and the write took half as long again).
        NewDelivery::from_contact(&self, provider)
    }
}

impl NewDelivery {
    pub fn from_contact(c: &Contact, provider: &str) -> Self {
        Self {
            staff_id: c.id.clone(),
            name: c.name.clone(),
            kana: c.kana.clone(),
            role: c.role.clone(),
            department: c.department.clone(),
            shelter: c.shelter.clone(),
            kind: c.kind,
            call_priority: c.call_priority,
            phones: c.phones.iter().map(|p| p.to_string()).collect(),
            email: c.email.as_ref().map(|e| e.to_string()),
            chat_handle: c.chat.get(provider).cloned(),
        }
    }
}

/// Composes the roll call and its recipients from a scenario and the contacts (how it is
/// sent is [`crate::planner::plan`]'s).
pub fn compose<M: AudienceMember>(
    scenario: &Scenario,
    contacts: impl IntoIterator<Item = M>,
    provider: &str,
    drill_override: Option<bool>,
    idempotency_key: Option<String>,
) -> (NewRollCall, Vec<NewDelivery>) {
    (
        new_roll_call(scenario, provider, drill_override, idempotency_key),
        deliveries(scenario, contacts, provider),
    )
}

/// The deliveries of `scenario`'s audience among `contacts`, in their order.
fn deliveries<M: AudienceMember>(
    scenario: &Scenario,
    contacts: impl IntoIterator<Item = M>,
    provider: &str,
) -> Vec<NewDelivery> {
    contacts
        .into_iter()
        .filter(|c| scenario.audience.matches(c.contact()))
        .map(|c| c.into_delivery(provider))
        .collect()
}

/// The roll call `scenario` starts on `provider`, without its recipients.
pub fn new_roll_call(
    scenario: &Scenario,
    provider: &str,
    drill_override: Option<bool>,
    idempotency_key: Option<String>,
) -> NewRollCall {
    let drill = drill_override.unwrap_or(scenario.drill) || scenario.drill;
    let title = if drill && !scenario.title.contains("訓練") {
        format!("【訓練】{}", scenario.title)
    } else {
        scenario.title.clone()
    };
    NewRollCall {
        scenario: scenario.name.clone(),
        title,
        message: scenario.message_text(drill),
        buttons: scenario.buttons.clone(),
        shelter_buttons: scenario.shelter_buttons.clone(),
        drill,
        deadline_ms: scenario.deadline.as_millis() as i64,
        provider: provider.to_string(),
        idempotency_key,
        resend_after_ms: scenario
            .escalation
            .resend_after
            .map(|d| d.as_millis() as i64),
        asks: scenario.asks.clone(),
        dispatch_plan: None,
        mail_plan: Some(crate::email::plan_json(&scenario.escalation)),
    }
}

/// Makes a roll call's deliveries from the stored directory a page at a time, while the
/// store writes the pages before (see [`crate::store::Store::start_roll_call`]).
pub trait DeliveryComposer: Send {
    /// One page of the directory (in staff-id order): the deliveries to write for it.
    fn page(&mut self, contacts: Vec<Contact>) -> Vec<NewDelivery>;
    /// Once, after the last page: what to write with the roll call, or `None` to write
    /// nothing at all (no contacts, or nobody in the audience).
    fn finish(&mut self) -> Option<Composed>;
}

/// What a [`DeliveryComposer`] decided once it had seen the whole directory.
#[derive(Debug, Clone, Default)]
pub struct Composed {
    /// Written with the roll call, in its transaction (see [`RollCall::dispatch_plan`]).
    pub dispatch_plan: Option<String>,
}

/// A delivery claimed by the dispatcher: everything needed to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub roll_call_id: RollCallId,
    pub chat_handle: ChatHandle,
    /// Staff and shelter phones are sent different buttons.
    pub kind: ContactKind,
    /// Including this one.
    pub attempts: i64,
    /// When this claim's lease ends: the claim's results are written only while it holds.
    pub lease_until: Millis,
}

/// One delivery's fate after a send attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    Sent {
        id: i64,
        at: Millis,
        deadline_at: Millis,
        message_id: Option<String>,
    },
    Retry {
        id: i64,
        next_attempt_at: Millis,
        error: String,
        /// A rate-limit refusal is the platform pacing anpi, not a failed attempt: it does
        /// not count towards giving up.
        refund_attempt: bool,
        /// The lease of the claim this comes from. A retry is written only while that claim
        /// still holds the row: once another worker has taken it over, putting it back would
        /// have it sent a third time.
        lease_until: Millis,
    },
    Failed {
        id: i64,
        error: String,
    },
}

/// The group of staff with no department, in progress and lists.
pub const NO_DEPARTMENT: &str = "(所属なし)";
/// The group of shelter phones with no shelter name.
pub const NO_SHELTER: &str = "(避難所名なし)";

/// Counts for HQ's progress view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub total: i64,
    pub pending: i64,
    pub sending: i64,
    pub sent: i64,
    pub read: i64,
    pub answered: i64,
    pub failed: i64,
    /// On the call list and not yet confirmed or closed by a call.
    pub to_call: i64,
    /// Ever escalated (people, not transitions: a person escalated, read late and escalated
    /// again is one).
    pub escalated: i64,
    /// Closed by a phone call (reached, or unreachable).
    pub reached: i64,
    /// Of `reached`: proxy answers HQ must act on — reached and injured, reached and needing
    /// help, and numbers that could not be reached at all.
    #[serde(default)]
    pub injured: i64,
    #[serde(default)]
    pub needs_help: i64,
    #[serde(default)]
    pub unreachable: i64,
    /// People by the most severe answer they gave in chat.
    #[serde(default)]
    pub answered_ok: i64,
    #[serde(default)]
    pub answered_attention: i64,
    #[serde(default)]
    pub answered_urgent: i64,
    /// Urgent answers HQ has not closed yet: the top of the action list.
    #[serde(default)]
    pub urgent_open: i64,
    /// People the message was sent to a second time (`resend_after`).
    #[serde(default)]
    pub resent: i64,
    /// Shelter phones in this group, and those silent past their deadline (on the list, not
    /// confirmed, not closed by a call).
    #[serde(default)]
    pub shelter_phones: i64,
    #[serde(default)]
    pub shelter_phones_silent: i64,
    /// Shelter phones in this group that read or answered.
    #[serde(default)]
    pub shelter_phones_confirmed: i64,
}

impl Counts {
    /// Everyone whose message went out (or who is known to have seen it).
    pub fn delivered(&self) -> i64 {
        self.sent + self.read + self.answered
    }
    pub fn confirmed(&self) -> i64 {
        self.read + self.answered
    }
    /// The shelter of these counts has a phone that is silent past its deadline.
    pub fn shelter_silent(&self) -> bool {
        self.shelter_phones_silent > 0
    }
}

/// Progress of one roll call, overall and by group.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub overall: Counts,
    /// Staff by department (shelter phones belong to no department).
    pub by_department: BTreeMap<String, Counts>,
    /// By shelter: its phones and the staff assigned to it (who count under their department
    /// as well).
    pub by_shelter: BTreeMap<String, Counts>,
    /// Standing answer value (the most severe each person gave) -> how many gave it.
    pub answers: BTreeMap<String, i64>,
    /// When the earliest pending deadline falls (stored time).
    pub next_deadline_at: Option<Millis>,
    /// When the last message went out.
    pub last_sent_at: Option<Millis>,
}

impl Progress {
    /// Shelters with a phone silent past its deadline, first, then the rest, each by name.
    pub fn shelters_silent_first(&self) -> Vec<(&String, &Counts)> {
        let mut v: Vec<_> = self.by_shelter.iter().collect();
        v.sort_by_key(|(name, c)| (!c.shelter_silent(), c.shelter_phones == 0, (*name).clone()));
        v
    }
}

/// A note HQ wrote on an entry (where the person is, what they need, what was done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub at: Millis,
    pub by: String,
    pub text: String,
}

/// An answer as HQ sees it: what it means, what the person chose or wrote, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenAnswer {
    pub level: AnswerLevel,
    /// The button value, "text" or "sticker".
    pub value: String,
    /// The button's label, or 自由記述 / スタンプ.
    pub label: String,
    /// What the person wrote, verbatim.
    pub text: Option<String>,
    pub at: Millis,
}

/// Why an entry is on HQ's action list, in the list's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// An answer that asks for help (負傷, 救助要請, free text with a help word), not yet closed
    /// by HQ: at the top the moment it is stored, deadline or not.
    Urgent,
    /// A shelter phone silent past its deadline (or never sent the message).
    SilentShelter,
    /// Sent, and not read by the deadline.
    NeverRead,
    /// The message could not go out: the platform refused it, or the person has no chat id.
    NotSent,
}

impl Action {
    pub fn rank(self) -> u8 {
        match self {
            Self::Urgent => 0,
            Self::SilentShelter => 1,
            Self::NeverRead => 2,
            Self::NotSent => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Urgent => "urgent",
            Self::SilentShelter => "silent_shelter",
            Self::NeverRead => "never_read",
            Self::NotSent => "not_sent",
        }
    }

    /// How HQ reads it, Japanese first.
    pub fn label(self) -> &'static str {
        match self {
            Self::Urgent => "要対応 / urgent",
            Self::SilentShelter => "避難所 応答なし / silent shelter",
            Self::NeverRead => "未読 / never read",
            Self::NotSent => "送信できず / not sent",
        }
    }
}

/// One row of HQ's action list (要対応): everyone with an urgent answer, and everyone ever
/// escalated, with what became of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallListEntry {
    pub delivery_id: i64,
    pub staff_id: StaffId,
    pub name: String,
    /// ふりがな.
    #[serde(default)]
    pub kana: Option<String>,
    /// 役職.
    #[serde(default)]
    pub role: Option<String>,
    pub department: Option<String>,
    pub shelter: Option<String>,
    pub kind: ContactKind,
    pub call_priority: u8,
    pub phones: Vec<String>,
    /// `phones` as dialled in Japan, grouped to be read aloud ("0256-34-5525"), for screens.
    #[serde(default)]
    pub phones_national: Vec<String>,
    pub state: DeliveryState,
    /// None for a person on the list only for an answer, or called without being escalated.
    pub reason: Option<EscalationReason>,
    pub last_error: Option<String>,
    pub sent_at: Option<Millis>,
    pub escalated_at: Option<Millis>,
    pub read_at: Option<Millis>,
    /// The most severe answer so far: it stands whatever the person sends later.
    #[serde(default)]
    pub standing: Option<GivenAnswer>,
    /// The latest answer, when it is not the standing one.
    #[serde(default)]
    pub latest: Option<GivenAnswer>,
    /// The latest answer's value (kept for older readers of the API).
    pub answer: Option<String>,
    pub outcome: Option<CallOutcome>,
    pub outcome_at: Option<Millis>,
    pub outcome_by: Option<String>,
    /// HQ's notes, oldest first.
    #[serde(default)]
    pub notes: Vec<Note>,
    /// The caller working this entry now, if any, and until when their hold lasts.
    pub claimed_by: Option<String>,
    pub claimed_until: Option<Millis>,
    /// When the message went a second time (`resend_after`).
    #[serde(default)]
    pub resent_at: Option<Millis>,
    /// When the latest urgent answer was received (anpi's clock, like `outcome_at`; the
    /// standing answer is the first of the gravest).
    #[serde(default)]
    pub urgent_at: Option<Millis>,
}

impl CallListEntry {
    /// An urgent answer HQ has not closed: an outcome that closes entries, recorded after the
    /// urgent answer arrived, closes it; a new urgent answer after that opens it again.
    pub fn urgent_open(&self) -> bool {
        let Some(a) = self
            .standing
            .as_ref()
            .filter(|a| a.level == AnswerLevel::Urgent)
        else {
            return false;
        };
        let since = self.urgent_at.unwrap_or(a.at);
        !(self.outcome.is_some_and(CallOutcome::closes_entry)
            && self.outcome_at.is_some_and(|t| t >= since))
    }

    /// Escalated, not confirmed in chat, and no call closed it.
    fn escalated_open(&self) -> bool {
        self.escalated_at.is_some()
            && !self.state.is_confirmed()
            && !self.outcome.is_some_and(CallOutcome::closes_entry)
    }

    /// Still needs HQ: an open urgent answer, or still to be called.
    pub fn to_call(&self) -> bool {
        self.urgent_open() || self.escalated_open()
    }

    /// Why HQ must act on this entry now, if it must.
    pub fn action(&self) -> Option<Action> {
        if self.urgent_open() {
            return Some(Action::Urgent);
        }
        if !self.escalated_open() {
            return None;
        }
        Some(if self.kind == ContactKind::ShelterPhone {
            Action::SilentShelter
        } else {
            match self.reason {
                Some(EscalationReason::SendFailed | EscalationReason::NoChatId) => Action::NotSent,
                _ => Action::NeverRead,
            }
        })
    }

    /// When the entry started waiting for HQ: the urgent answer, else the send (or the
    /// escalation, for a message that never went out).
    pub fn waiting_since(&self) -> Option<Millis> {
        if self.urgent_open() {
            return self.standing.as_ref().map(|a| a.at);
        }
        self.sent_at.or(self.escalated_at)
    }

    /// The action list's one order, used by every view and by the call queue: open entries
    /// by [`Action`] (urgent, silent shelters, never read, not sent), then closed ones; within
    /// each, by call priority, then longest waiting, then staff id.
    /// The store writes the same order in SQL (`action_rank` and `WAITING_SINCE` in
    /// `store::shared`); a contract test holds the two together.
    pub fn call_order(&self, other: &Self) -> std::cmp::Ordering {
        let key = |e: &Self| {
            (
                e.action().map_or(4, Action::rank),
                e.call_priority,
                e.waiting_since().unwrap_or(i64::MIN),
            )
        };
        key(self)
            .cmp(&key(other))
            .then_with(|| self.staff_id.as_str().cmp(other.staff_id.as_str()))
    }
}

/// A person who sent an urgent answer after their roll call was closed, while no open roll
/// call of theirs could take it: shown to HQ on its own until HQ closes it with a note.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LateAnswer {
    pub id: i64,
    /// The closed roll call the answer came to.
    pub roll_call_id: RollCallId,
    pub staff_id: StaffId,
    pub name: String,
    pub kana: Option<String>,
    pub department: Option<String>,
    pub shelter: Option<String>,
    pub phones: Vec<String>,
    /// `phones` as dialled in Japan, grouped to be read aloud ("0256-34-5525"), for screens.
    #[serde(default)]
    pub phones_national: Vec<String>,
    pub answer: GivenAnswer,
    pub closed_at: Option<Millis>,
    pub closed_by: Option<String>,
    pub note: Option<String>,
}

/// A recipient found by a caller's search (name, kana, id or phone).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub staff_id: StaffId,
    pub name: String,
    pub kana: Option<String>,
    pub role: Option<String>,
    pub department: Option<String>,
    pub shelter: Option<String>,
    pub kind: ContactKind,
    pub phones: Vec<String>,
    /// `phones` as dialled in Japan, grouped to be read aloud ("0256-34-5525"), for screens.
    #[serde(default)]
    pub phones_national: Vec<String>,
    pub state: DeliveryState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = DeliveryState> {
        prop::sample::select(DeliveryState::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn a_read_never_lowers_the_state(s in state()) {
            let after = s.after(DeliveryEvent::Read);
            prop_assert!(after.is_confirmed());
            if s == DeliveryState::Answered { prop_assert_eq!(after, DeliveryState::Answered); }
        }

        #[test]
        fn receipts_in_any_order_end_in_the_same_state(events in prop::collection::vec(any::<bool>(), 1..20)) {
            // true = answer, false = read
            let fold = |evs: &[bool]| evs.iter().fold(DeliveryState::Sent, |s, &ans| s.after(if ans { DeliveryEvent::Answered } else { DeliveryEvent::Read }));
            let mut rev = events.clone();
            rev.reverse();
            prop_assert_eq!(fold(&events), fold(&rev));
            let any_answer = events.iter().any(|a| *a);
            prop_assert_eq!(fold(&events) == DeliveryState::Answered, any_answer);
        }
    }

    #[test]
    fn the_state_machine_only_moves_forward_but_for_a_retry() {
        for (from, event, to) in TRANSITIONS {
            // Failed sorts last but is not "further" than read: a read of a message whose send
            // was reported failed still proves the person saw it.
            let back = to < from && !(*from == DeliveryState::Failed && to.is_confirmed());
            assert!(
                !back
                    || (*from, *event, *to)
                        == (
                            DeliveryState::Sending,
                            DeliveryEvent::Retried,
                            DeliveryState::Pending
                        ),
                "{from} -{event:?}-> {to} goes back"
            );
        }
        // Each (from, event) pair is listed at most once.
        for (i, (f, e, _)) in TRANSITIONS.iter().enumerate() {
            assert!(!TRANSITIONS[i + 1..]
                .iter()
                .any(|(f2, e2, _)| f2 == f && e2 == e));
        }
        // Confirmed stays confirmed; failed is final but for a read or an answer.
        for s in DeliveryState::ALL {
            for e in DeliveryEvent::ALL {
                if s.is_confirmed() {
                    assert!(s.after(e).is_confirmed(), "{s} -{e:?}");
                }
                if s == DeliveryState::Failed
                    && !matches!(e, DeliveryEvent::Read | DeliveryEvent::Answered)
                {
                    assert_eq!(s.after(e), s);
                }
            }
        }
    }

    #[test]
    fn the_state_sql_is_the_table() {
        assert_eq!(
            state_after_sql(DeliveryEvent::Accepted, "d.state"),
            "CASE d.state WHEN 'sending' THEN 'sent' ELSE d.state END"
        );
        assert_eq!(
            states_moved_sql(DeliveryEvent::Closed),
            "('pending', 'sending')"
        );
        assert_eq!(
            state_after_sql(DeliveryEvent::Read, "state"),
            "CASE state WHEN 'pending' THEN 'read' WHEN 'sending' THEN 'read' \
             WHEN 'sent' THEN 'read' WHEN 'failed' THEN 'read' ELSE state END"
        );
    }

    #[test]
    fn outcome_parses_cli_forms() {
        assert_eq!(
            CallOutcome::parse("no-answer").unwrap(),
            CallOutcome::NoAnswer
        );
        assert_eq!(
            CallOutcome::parse("SAFE").unwrap(),
            CallOutcome::ReachedSafe
        );
        let err = CallOutcome::parse("fine").unwrap_err();
        assert!(err.contains("safe, injured"), "{err}");
    }

    #[test]
    fn no_answer_keeps_the_person_on_the_list() {
        assert!(!CallOutcome::NoAnswer.closes_entry());
        assert!(CallOutcome::ReachedSafe.closes_entry());
        assert!(CallOutcome::Unreachable.closes_entry());
    }
}
