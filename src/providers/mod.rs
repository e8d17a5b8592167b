//! Chat providers: one trait, one adapter per platform. The core never branches on a
//! provider's name; it reads what a provider can do from [`Capabilities`] and reacts to the
//! error class the adapter chose ([`ProviderError`]).
//!
//! The adapters share their HTTP rules (client shape, transport errors, `Retry-After`, which
//! refusals are temporary) in [`http`].
//!
//! Invariant: an [`OutboundMessage`] carries a chat id and the message text, never personal
//! data (phone numbers, e-mail addresses, home addresses).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::ids::{ChatHandle, RollCallId};
use crate::scenario::Asks;

pub mod http;
pub mod lineworks;
pub mod matrix;
pub mod simulator;

/// One tap-to-answer choice shown under the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerButton {
    /// What the person sees: "無事 / Safe".
    pub label: String,
    /// What comes back when they tap it: "safe".
    pub value: String,
}

/// What is sent to one person. Deliberately small: this is all that leaves the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// anpi's delivery row; lets a provider make sends idempotent.
    pub delivery_id: i64,
    pub roll_call_id: RollCallId,
    pub to: ChatHandle,
    /// The roll call's message, Japanese first, then English: what it asks people to do is
    /// added by the provider for its route with `asks.compose` (the one rule every provider
    /// shares; [`crate::scenario::Asks`]).
    pub text: String,
    pub buttons: Vec<AnswerButton>,
    /// A second send of the same delivery (`resend_after`): a provider that makes sends
    /// idempotent by delivery must not fold it into the first.
    #[serde(default)]
    pub resend: bool,
    #[serde(default)]
    pub asks: Asks,
}

/// A successful send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// The platform's id for the message, where it gives one.
    pub message_id: Option<String>,
}

/// A send or poll that did not work, classified once, in the adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth trying again (5xx, timeout, connection refused), not before `after` if given.
    #[error("temporary failure: {reason}")]
    Retryable {
        after: Option<Duration>,
        reason: String,
    },
    /// The platform's rate limit was hit: nothing more to this provider until `reset` passes.
    #[error("rate limited for {reset:?}")]
    RateLimited { reset: Duration },
    /// Will never work (unknown user, account disabled, message refused).
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// The platform refused anpi's own credentials (a revoked bot token): nothing goes out
    /// for anyone until they are fixed. Not the person's failure: tried again after `after`
    /// without using up an attempt, until the person's deadline.
    #[error("not authorized: {reason}")]
    Unauthorized { after: Duration, reason: String },
}

/// A platform's request budget: `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

impl RateLimit {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.per.as_secs_f64().max(1e-9)
    }
}

/// What a provider can do; the dispatcher and the planner read only this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The platform tells anpi when a person has read a message.
    pub read_receipts: bool,
    /// Messages can carry one-tap answer buttons.
    pub buttons: bool,
    /// A send with the same delivery id twice shows the message once.
    pub idempotent_sends: bool,
    /// The platform's send budget, if it has one.
    pub rate_limit: Option<RateLimit>,
    /// How many sends may be in flight at once.
    pub max_in_flight: usize,
}

/// What came back from a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboundKind {
    /// A read receipt.
    Read,
    /// A one-tap answer button; `value` is the button's value ("safe").
    Answer { value: String },
    /// A free-text reply.
    Reply { text: String },
    /// A sticker or reaction: a full answer.
    Sticker { id: String },
}

/// One event from a platform, before anpi has matched it to a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// The platform's id for the event; duplicates share it.
    pub event_id: String,
    /// The roll call the event answers, when the platform can tell.
    pub roll_call_id: Option<RollCallId>,
    pub from: ChatHandle,
    pub kind: InboundKind,
    pub occurred_at: DateTime<Utc>,
}

/// Events fetched from a pull-based platform and where to continue next time.
#[derive(Debug, Clone, Default)]
pub struct EventBatch {
    pub events: Vec<InboundEvent>,
    /// Opaque; stored with the applied events so a restart resumes exactly here.
    pub cursor: Option<String>,
}

/// A way of reaching people that a platform offers. The planner ([`crate::planner`]) weighs
/// them by how many requests reaching the audience takes under each one's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// One request reaches everyone (a must-read board post).
    Broadcast,
    /// One request per group room (a department's room).
    Rooms,
    /// One request per person (1:1 talk): [`ChatProvider::send`].
    Direct,
}

/// One route a provider offers beyond 1:1 sends, with its own limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: RouteKind,
    /// This route's API budget; `None` means the provider's [`Capabilities::rate_limit`].
    pub rate_limit: Option<RateLimit>,
    /// Rooms: the groups (departments) that have one.
    pub groups: Vec<String>,
    /// Rooms: a group this large or larger gets no push notification, so it is not covered.
    pub max_members: Option<usize>,
    /// People reached this way show up as read individually (a board post's reader list).
    pub read_signal: bool,
}

/// One request that reaches many people at once: a board post for everyone, or one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastRequest {
    pub roll_call_id: RollCallId,
    pub kind: RouteKind,
    /// Rooms: which group's room.
    pub group: Option<String>,
    pub title: String,
    /// The roll call's message, Japanese first, then English; the provider adds what it asks
    /// for the route with `asks.compose`.
    pub text: String,
    pub buttons: Vec<AnswerButton>,
    pub asks: Asks,
    /// Must-read until (board posts).
    pub until: DateTime<Utc>,
}

/// A broadcast the platform accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Broadcasted {
    /// The platform's id for what was posted (a board post id), where it gives one.
    pub post_id: Option<String>,
}

/// A chat platform.
#[async_trait]
pub trait ChatProvider: Send + Sync + std::fmt::Debug {
    /// The key used in config, contacts (`chat.<name>`) and storage.
    fn name(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// Sends one message to one person.
    async fn send(&self, msg: &OutboundMessage) -> Result<Sent, ProviderError>;

    /// Fetches events after `cursor`, waiting up to `wait` for some to arrive. Push-based
    /// platforms (callbacks) return an empty batch.
    async fn poll_events(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<EventBatch, ProviderError> {
        let _ = (cursor, wait);
        Ok(EventBatch::default())
    }

    /// How far the feed is known complete after a poll asked at `asked_at` and answered at
    /// `answered_at` (clock millis) returned `events` events: every event the platform held
    /// until then is in that batch or an earlier one. The default suits a feed that hands over
    /// everything it holds in one answer and long-polls: complete to the answer when it had
    /// nothing, to the question when it had something. A paged feed says `None` for a full
    /// page (more may be waiting). Escalation and the deadline mail wait for this to pass the
    /// deadline.
    fn feed_complete_to(
        &self,
        events: usize,
        asked_at: Millis,
        answered_at: Millis,
    ) -> Option<Millis> {
        Some(if events == 0 { answered_at } else { asked_at })
    }

    /// What the operator must know when anpi starts with this provider (a limit of the set-up
    /// that changes what anpi can see), one plain sentence each; none by default.
    async fn startup_notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The routes besides 1:1 sends this provider offers; none by default.
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }

    /// The receipt watcher has stored the last batch `poll_events` returned, with its cursor:
    /// what that batch reported need not be reported again. Until then it must be.
    fn events_stored(&self) {}

    /// A broadcast made earlier, by this process or another replica, whose reads the event
    /// feed should follow (the receipt watcher passes every open roll call's stored one).
    fn follow_broadcast(&self, roll_call: RollCallId, post_id: &str, posted_at: Millis) {
        let _ = (roll_call, post_id, posted_at);
    }

    /// Sends one request that reaches many people (see [`Route`]). Only called for a route the
    /// provider lists in [`ChatProvider::routes`].
    async fn broadcast(&self, req: &BroadcastRequest) -> Result<Broadcasted, ProviderError> {
        Err(ProviderError::Permanent(format!(
            "{} offers no {:?} route",
            self.name(),
            req.kind
        )))
    }
}
