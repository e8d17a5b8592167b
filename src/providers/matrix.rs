//! The Matrix adapter: sends each person one `m.text` in their direct-message room with the
//! bot, and follows the bot's `/sync` stream for public read receipts (`m.read`), replies and
//! reactions.
//!
//! State it keeps in the store:
//! - per person ([`crate::store::MatrixRoom`]): the DM room (written by `anpi matrix prepare`,
//!   read by every send); whether `prepare` invited them again after they left, so that a send
//!   before they accept says they left; the room found end-to-end encrypted, for the warning
//!   `anpi serve` gives at start;
//! - per sent check ([`crate::store::MatrixCheck`]): the roll call it belongs to (a cache: the
//!   check's own content also carries `org.anpi.roll_call`, so a lost write costs a lookup, not
//!   a receipt). The newest check sent in a room is what a receipt on any later event
//!   (receipts only move forward) still confirms. Each check also names the check sent before
//!   it in the room (`prev`), so a receipt on a later check (an announcement after a safety
//!   check, or two roll calls at once) confirms the earlier ones too.
//!
//! Before each first send the person's membership of their room is read: someone not joined
//! (never accepted, left, unknown user) is a permanent failure naming which, so they are on
//! the call list at once. What a person writes or reacts in their room counts for the newest
//! open roll call they are in (the event names none and the store decides), unless it replies
//! to or reacts on an open roll call's check; edits (`m.replace`) are read again as answers;
//! an encrypted reply is reported as unreadable, never dropped.
//!
//! Invariants: every HTTP outcome is classified here, once; a send the homeserver accepted is
//! never reported as failed; a send is idempotent (the transaction id comes from the delivery,
//! so a retry after a timeout never posts twice); the sync cursor is `next_batch`, stored by the
//! core with the events it covers; without one, and once more on the first poll of every
//! process, the adapter does a full `/sync`, which returns every room's current receipts
//! (reconciliation after a restart or a lost cursor).
//!
//! What Matrix does not show is not guessed: a private receipt (`m.read.private`) is invisible
//! to the bot, so such a reader stays unconfirmed and is escalated at the deadline (the safe
//! direction). "Later than the check" is judged by `origin_server_ts`, which is exact for people
//! on the bot's own homeserver and as good as the servers' clocks across federation.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};
use unicode_normalization::UnicodeNormalization;

use super::{
    Capabilities, ChatProvider, EventBatch, InboundEvent, InboundKind, OutboundMessage,
    ProviderError, RateLimit, Sent,
};
use crate::clock::SharedClock;
use crate::config::{MatrixConfig, Secret};
use crate::ids::{ChatHandle, RollCallId};
use crate::store::{MatrixCheck, MatrixRoom, SharedStore, StoreError};

/// The provider's name in config, contacts and storage.
pub const NAME: &str = "matrix";
/// Per-request budget; a `/sync` gets this on top of its long-poll wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeline events per room in one `/sync`: more than a person writes between two polls.
const TIMELINE_LIMIT: u32 = 100;
/// The key in a check's content that names its roll call.
const ROLL_CALL_KEY: &str = "org.anpi.roll_call";
/// How many times `prepare` waits out a 429 for one room before giving up on it.
const PREPARE_ATTEMPTS: u32 = 20;

/// A failure of `anpi matrix prepare`.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("homeserver: {0}")]
    Provider(#[from] ProviderError),
}

/// What one check in a room is, as remembered for the receipts that come back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckRecord {
    rc: i64,
    /// The person the check went to, when known.
    to: Option<String>,
    /// The answer values in the order they were numbered in the text ("1" = values[0]).
    values: Vec<String>,
    /// The homeserver's `origin_server_ts`, filled in the first time it is needed.
    ts: Option<i64>,
    /// The check sent before this one in the same room, when there was one.
    prev: Option<String>,
}

impl From<MatrixCheck> for CheckRecord {
    fn from(c: MatrixCheck) -> Self {
        Self {
            rc: c.roll_call_id,
            to: c.to,
            values: c.values,
            ts: c.origin_ts,
            prev: c.prev,
        }
    }
}

/// How far back a receipt on a check also confirms the checks sent before it in the room.
const EARLIER_CHECKS: usize = 8;

/// Why a person's DM room does not reach them. The reason HQ reads names which case it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unreachable {
    /// Invited to the room and has not accepted (nothing the bot posts reaches them).
    NeverAccepted,
    /// Was in the room and left it (or was removed).
    Left,
    /// The homeserver knows no such user (a mistyped id).
    UnknownUser,
    /// The user exists but is not invited to the room.
    NotInvited,
}

impl Unreachable {
    /// One line for HQ, Japanese first.
    pub fn label(self) -> &'static str {
        match self {
            Self::NeverAccepted => "招待未承諾 / never accepted the invite",
            Self::Left => "ルームから退出 / left the room",
            Self::UnknownUser => "存在しないユーザー / unknown user",
            Self::NotInvited => "ルームに未招待 / not invited to the room",
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What `prepare` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrepareReport {
    /// People who already had a DM room.
    pub existing: usize,
    /// Rooms created now (the person is invited and must accept once).
    pub created: usize,
    /// People who had left their room and were invited to it again.
    pub reinvited: Vec<ChatHandle>,
    /// People a message would not reach now, and why (a room just created is among them
    /// until the person accepts the invite).
    pub unreachable: Vec<(ChatHandle, Unreachable)>,
    /// Rooms the homeserver encrypts: anpi cannot read replies there (receipts and reactions
    /// still count).
    pub encrypted: Vec<(ChatHandle, String)>,
    /// People no room could be made for, with the homeserver's reason.
    pub failed: Vec<(ChatHandle, String)>,
}

/// A client for one bot account on one homeserver.
pub struct MatrixProvider {
    client: reqwest::Client,
    homeserver: Url,
    auth: HeaderValue,
    bot: String,
    store: SharedStore,
    clock: SharedClock,
    rate_limit: Option<RateLimit>,
    max_in_flight: usize,
    /// The inline `/sync` filter (JSON).
    filter: String,
    /// Whether this process has read every room's current receipts once (see `poll_events`).
    reconciled: std::sync::atomic::AtomicBool,
    /// While `prepare` runs: lookups wait out 429s and outages (a send never does).
    patient: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for MatrixProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatrixProvider")
            .field("homeserver", &self.homeserver.as_str())
            .field("bot", &self.bot)
            .field("access_token", &"[redacted]")
            .field("rate_limit", &self.rate_limit)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl MatrixProvider {
    /// `store` holds the person -> DM room map and the sent-check records.
    pub fn new(
        config: &MatrixConfig,
        token: &Secret,
        store: SharedStore,
        clock: SharedClock,
    ) -> Result<Self, ProviderError> {
        let homeserver = Url::parse(&config.homeserver).map_err(|e| {
            ProviderError::Permanent(format!(
                "homeserver {:?} is not a URL: {e}",
                config.homeserver
            ))
        })?;
        if homeserver.cannot_be_a_base() {
            return Err(ProviderError::Permanent(format!(
                "homeserver {:?} is not an http(s) URL",
                config.homeserver
            )));
        }
        let max_in_flight = config.max_in_flight.max(1);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max_in_flight + 1)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            // Fails only when the TLS backend cannot start: nothing anpi could run without.
            .expect("building the HTTP client");
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ProviderError::Permanent("the Matrix access token is not valid".into()))?;
        auth.set_sensitive(true);
        let filter = json!({
            "presence": {"types": []},
            "account_data": {"types": []},
            "room": {
                "state": {"types": []},
                "account_data": {"types": []},
                "timeline": {
                    "types": ["m.room.message", "m.reaction", "m.sticker", "m.room.encrypted"],
                    "not_senders": [config.user_id],
                    "limit": TIMELINE_LIMIT,
                },
                "ephemeral": {"types": ["m.receipt"]},
            },
        })
        .to_string();
        Ok(Self {
            client,
            homeserver,
            auth,
            bot: config.user_id.clone(),
            store,
            clock,
            rate_limit: config.rate_limit(),
            max_in_flight,
            filter,
            reconciled: std::sync::atomic::AtomicBool::new(false),
            patient: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `<homeserver>/_matrix/client/v3/<segments...>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.homeserver.clone();
        {
            // `new` refused URLs that cannot be a base, so this always has path segments.
            let mut path = u.path_segments_mut().expect("a base URL");
            path.pop_if_empty().extend(["_matrix", "client", "v3"]);
            path.extend(segments);
        }
        u
    }

    /// What is known of `user`'s DM room.
    async fn room_of(&self, user: &str) -> Result<Option<MatrixRoom>, ProviderError> {
        self.store.matrix_room(user).await.map_err(store_error)
    }

    /// The DM room anpi uses for `user`, if `prepare` made one.
    pub async fn dm_room(&self, user: &ChatHandle) -> Result<Option<String>, ProviderError> {
        Ok(self.room_of(user.as_str()).await?.and_then(|r| r.room_id))
    }

    /// The check `event` is, as recorded.
    async fn stored_check(&self, event: &str) -> Result<Option<CheckRecord>, ProviderError> {
        let check = self.store.matrix_check(event).await.map_err(store_error)?;
        Ok(check.map(CheckRecord::from))
    }

    /// The newest check sent in `room`, and its event id.
    async fn newest_check(
        &self,
        room: &str,
    ) -> Result<Option<(String, CheckRecord)>, ProviderError> {
        let check = self.store.newest_matrix_check(room).await;
        Ok(check
            .map_err(store_error)?
            .map(|c| (c.event_id.clone(), CheckRecord::from(c))))
    }

    /// Records check `event` in `room`: sent now (`sent`), or learnt from the homeserver.
    async fn record_check(
        &self,
        room: &str,
        event: &str,
        rec: &CheckRecord,
        sent: bool,
    ) -> Result<(), ProviderError> {
        let check = MatrixCheck {
            event_id: event.to_string(),
            room_id: Some(room.to_string()),
            roll_call_id: rec.rc,
            to: rec.to.clone(),
            values: rec.values.clone(),
            origin_ts: rec.ts,
            prev: rec.prev.clone(),
            sent_at: sent.then(|| self.clock.now_millis()),
        };
        self.store
            .record_matrix_check(&check)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Makes sure every one of `people` has a DM room that reaches them: creates a room (invite,
    /// `is_direct`, no encryption asked for) for whoever has none and exists on the homeserver,
    /// invites again whoever left their room, and reports who is not reachable and why, and
    /// which rooms the homeserver encrypts. Waits out the homeserver's 429s. Meant for before a
    /// roll call: a room costs about 100 ms and the person must accept the invite once.
    pub async fn prepare(&self, people: &[ChatHandle]) -> Result<PrepareReport, MatrixError> {
        self.patient
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let report = self.prepare_all(people).await;
        self.patient
            .store(false, std::sync::atomic::Ordering::Relaxed);
        report
    }

    async fn prepare_all(&self, people: &[ChatHandle]) -> Result<PrepareReport, MatrixError> {
        let mut report = PrepareReport::default();
        let mut created = Vec::new();
        let mut encrypted: Vec<(String, String)> = Vec::new();
        for person in people {
            let user = person.as_str();
            let room = match self.dm_room(person).await? {
                Some(room) => {
                    report.existing += 1;
                    let state = match self.membership(&room, user).await {
                        Ok(m) => m,
                        Err(e) => {
                            report.failed.push((person.clone(), e.to_string()));
                            continue;
                        }
                    };
                    match state.as_deref() {
                        Some("join") => {}
                        Some("leave") => match self.invite(&room, user).await {
                            Ok(()) => {
                                self.store
                                    .set_matrix_left(user, self.clock.now_millis())
                                    .await?;
                                report.reinvited.push(person.clone());
                                report.unreachable.push((person.clone(), Unreachable::Left));
                            }
                            Err(e) => report.failed.push((person.clone(), e.to_string())),
                        },
                        Some("ban") => {
                            report.unreachable.push((person.clone(), Unreachable::Left));
                        }
                        Some(_) | None => {
                            let why = match self.user_exists(user).await? {
                                false => Unreachable::UnknownUser,
                                true if state.is_some() => Unreachable::NeverAccepted,
                                true => match self.invite(&room, user).await {
                                    Ok(()) => Unreachable::NeverAccepted,
                                    Err(e) => {
                                        report.failed.push((person.clone(), e.to_string()));
                                        continue;
                                    }
                                },
                            };
                            report.unreachable.push((person.clone(), why));
                        }
                    }
                    room
                }
                None => {
                    if !self.user_exists(user).await? {
                        report
                            .unreachable
                            .push((person.clone(), Unreachable::UnknownUser));
                        continue;
                    }
                    match self.create_dm(person).await {
                        Ok(room) => {
                            self.store
                                .set_matrix_room(user, &room, self.clock.now_millis())
                                .await?;
                            created.push((user.to_string(), room.clone()));
                            report.created += 1;
                            report
                                .unreachable
                                .push((person.clone(), Unreachable::NeverAccepted));
                            room
                        }
                        Err(e) => {
                            report.failed.push((person.clone(), e.to_string()));
                            continue;
                        }
                    }
                }
            };
            if self.is_encrypted(&room).await? {
                encrypted.push((user.to_string(), room.clone()));
                report.encrypted.push((person.clone(), room));
            }
        }
        // What `anpi serve` warns about at start (see `startup_notes`).
        self.store
            .replace_matrix_encrypted_rooms(&encrypted, self.clock.now_millis())
            .await?;
        if !created.is_empty() {
            // Clients show a room as a direct chat when the bot's m.direct says so; a failure
            // here only changes how the room is listed.
            if let Err(e) = self.mark_direct(&created).await {
                tracing::warn!(error = %e, "could not update the bot's m.direct list");
            }
        }
        Ok(report)
    }

    /// Sends one request, waiting out the homeserver's 429s and brief outages as `prepare`
    /// does (it runs ahead of a roll call, so waiting is right).
    async fn patiently(
        &self,
        what: &str,
        req: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, ProviderError> {
        let attempts = if self.patient.load(std::sync::atomic::Ordering::Relaxed) {
            PREPARE_ATTEMPTS
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = req()
                .header(AUTHORIZATION, self.auth.clone())
                .send()
                .await
                .map_err(transport_error)?;
            if resp.status() != StatusCode::TOO_MANY_REQUESTS && !resp.status().is_server_error() {
                return Ok(resp);
            }
            match refusal(resp, what).await {
                ProviderError::RateLimited { reset } if attempt < attempts => {
                    tokio::time::sleep(reset).await
                }
                ProviderError::Retryable { after, .. } if attempt < attempts => {
                    tokio::time::sleep(after.unwrap_or(Duration::from_secs(1))).await
                }
                e => return Err(e),
            }
        }
    }

    /// `user`'s membership of `room` ("join", "invite", "leave", "ban"), `None` when they
    /// have none.
    async fn membership(&self, room: &str, user: &str) -> Result<Option<String>, ProviderError> {
        let url = self.url(&["rooms", room, "state", "m.room.member", user]);
        let resp = self
            .patiently("membership", || self.client.get(url.clone()))
            .await?;
        match resp.status() {
            s if s.is_success() => {
                let v: Value = resp.json().await.map_err(transport_error)?;
                Ok(v["membership"].as_str().map(str::to_string))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(refusal(resp, "membership").await),
        }
    }

    /// Whether the homeserver knows `user` (the profile lookup; a server that keeps profiles
    /// private answers 403, which says nothing, so the user is taken to exist).
    async fn user_exists(&self, user: &str) -> Result<bool, ProviderError> {
        let url = self.url(&["profile", user]);
        let resp = self
            .patiently("profile", || self.client.get(url.clone()))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::FORBIDDEN => Ok(true),
            _ => Err(refusal(resp, "profile").await),
        }
    }

    async fn invite(&self, room: &str, user: &str) -> Result<(), ProviderError> {
        let url = self.url(&["rooms", room, "invite"]);
        let body = json!({ "user_id": user });
        let resp = self
            .patiently("invite", || self.client.post(url.clone()).json(&body))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(refusal(resp, "invite").await)
        }
    }

    /// Whether `room` has an `m.room.encryption` state event: then the bot cannot read what
    /// people write there (anpi does not do end-to-end encryption).
    async fn is_encrypted(&self, room: &str) -> Result<bool, ProviderError> {
        let url = self.url(&["rooms", room, "state", "m.room.encryption", ""]);
        let resp = self
            .patiently("encryption state", || self.client.get(url.clone()))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(refusal(resp, "encryption state").await),
        }
    }

    /// Why the person's room does not reach them now, if it does not.
    async fn unreachable(
        &self,
        room: &str,
        user: &str,
    ) -> Result<Option<Unreachable>, ProviderError> {
        Ok(match self.membership(room, user).await?.as_deref() {
            Some("join") => None,
            Some("leave") | Some("ban") => Some(Unreachable::Left),
            Some("invite")
                if self
                    .room_of(user)
                    .await?
                    .is_some_and(|r| r.left_at.is_some()) =>
            {
                Some(Unreachable::Left)
            }
            Some(_) if self.user_exists(user).await? => Some(Unreachable::NeverAccepted),
            None if self.user_exists(user).await? => Some(Unreachable::NotInvited),
            _ => Some(Unreachable::UnknownUser),
        })
    }

    /// The rooms `prepare` (or the event feed) found encrypted, person -> room.
    pub async fn encrypted_rooms(&self) -> Result<HashMap<String, String>, ProviderError> {
        let rooms = self.store.matrix_encrypted_rooms().await;
        Ok(rooms.map_err(store_error)?.into_iter().collect())
    }

    /// Notes that `room` (of `user`) is encrypted, for the warning at start.
    async fn remember_encrypted(&self, user: &str, room: &str) -> Result<(), ProviderError> {
        let known = self.room_of(user).await?.and_then(|r| r.encrypted_room);
        if known.as_deref() != Some(room) {
            self.store
                .add_matrix_encrypted_room(user, room, self.clock.now_millis())
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    async fn create_dm(&self, person: &ChatHandle) -> Result<String, ProviderError> {
        let body = json!({
            "preset": "trusted_private_chat",
            "is_direct": true,
            "invite": [person.as_str()],
        });
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .client
                .post(self.url(&["createRoom"]))
                .header(AUTHORIZATION, self.auth.clone())
                .json(&body)
                .send()
                .await
                .map_err(transport_error)?;
            if resp.status().is_success() {
                let v: Value = resp.json().await.map_err(transport_error)?;
                return v["room_id"].as_str().map(str::to_string).ok_or_else(|| {
                    ProviderError::Permanent("createRoom answered without a room_id".into())
                });
            }
            match refusal(resp, "createRoom").await {
                ProviderError::RateLimited { reset } if attempt < PREPARE_ATTEMPTS => {
                    tokio::time::sleep(reset).await
                }
                ProviderError::Retryable { after, .. } if attempt < PREPARE_ATTEMPTS => {
                    tokio::time::sleep(after.unwrap_or(Duration::from_secs(1))).await
                }
                e => return Err(e),
            }
        }
    }

    async fn mark_direct(&self, created: &[(String, String)]) -> Result<(), ProviderError> {
        let url = self.url(&["user", &self.bot, "account_data", "m.direct"]);
        let resp = self
            .client
            .get(url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(transport_error)?;
        // Only a missing list starts empty: anything else unreadable would be overwritten.
        let mut direct: HashMap<String, Vec<String>> = if resp.status().is_success() {
            resp.json().await.map_err(|e| ProviderError::Retryable {
                after: None,
                reason: format!("the bot's m.direct list is not readable ({e}); left unchanged"),
            })?
        } else if resp.status() != StatusCode::NOT_FOUND {
            return Err(refusal(resp, "m.direct").await);
        } else {
            HashMap::new()
        };
        for (user, room) in created {
            let rooms = direct.entry(user.clone()).or_default();
            if !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        let resp = self
            .client
            .put(url)
            .header(AUTHORIZATION, self.auth.clone())
            .json(&direct)
            .send()
            .await
            .map_err(transport_error)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(refusal(resp, "m.direct").await)
        }
    }

    /// Fetches one event; `None` when the homeserver will not show it (gone, or not visible).
    async fn fetch_event(&self, room: &str, event: &str) -> Result<Option<Value>, ProviderError> {
        let resp = self
            .client
            .get(self.url(&["rooms", room, "event", event]))
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(transport_error)?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.json().await.map_err(transport_error)?)),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(None),
            _ => Err(refusal(resp, "event lookup").await),
        }
    }

    /// The check `event` is, if it is one of anpi's.
    async fn check_of(
        &self,
        room: &str,
        event: &str,
    ) -> Result<Option<CheckRecord>, ProviderError> {
        if let Some(rec) = self.stored_check(event).await? {
            return Ok(Some(rec));
        }
        // Not in the cache (the write after the send was lost): the check says what it is.
        let Some(ev) = self.fetch_event(room, event).await? else {
            return Ok(None);
        };
        if ev["sender"].as_str() != Some(self.bot.as_str()) {
            return Ok(None);
        }
        let Some(rc) = ev["content"][ROLL_CALL_KEY].as_i64() else {
            return Ok(None);
        };
        let rec = CheckRecord {
            rc,
            to: None,
            values: Vec::new(),
            ts: ev["origin_server_ts"].as_i64(),
            prev: None,
        };
        self.record_check(room, event, &rec, false).await?;
        Ok(Some(rec))
    }

    /// The newest check sent in `room`, with its server timestamp.
    async fn latest_check(&self, room: &str) -> Result<Option<CheckRecord>, ProviderError> {
        let Some((event, mut rec)) = self.newest_check(room).await? else {
            return Ok(None);
        };
        if rec.ts.is_none() {
            let Some(ev) = self.fetch_event(room, &event).await? else {
                return Ok(None);
            };
            rec.ts = ev["origin_server_ts"].as_i64();
            if let Some(ts) = rec.ts {
                self.store
                    .set_matrix_check_ts(&event, ts)
                    .await
                    .map_err(store_error)?;
            }
        }
        Ok(Some(rec))
    }

    /// The check a receipt by `from` on `target` confirms: `target` itself, or else the newest
    /// check in the room if `target` is later.
    async fn read_check(
        &self,
        room: &str,
        target: &str,
        from: &str,
    ) -> Result<Option<CheckRecord>, ProviderError> {
        if let Some(rec) = self.check_of(room, target).await? {
            return Ok(Some(rec));
        }
        let Some(latest) = self.latest_check(room).await? else {
            return Ok(None);
        };
        if latest.to.as_deref().is_some_and(|to| to != from) {
            return Ok(None);
        }
        let at = self
            .fetch_event(room, target)
            .await?
            .and_then(|ev| ev["origin_server_ts"].as_i64());
        Ok(match (at, latest.ts) {
            (Some(at), Some(check)) if at >= check => Some(latest),
            _ => None,
        })
    }

    /// The check something `from` wrote or reacted in `room` (at server time `at`) answers,
    /// and whether it names it: `target` when that is a check of an open roll call (named);
    /// otherwise the newest open check in the room, or the newest check when none is open (not
    /// named: the store gives it to the newest open roll call the person is in, so a closed
    /// roll call never changes). `None` for what came before the room's newest check.
    async fn answered_check(
        &self,
        room: &str,
        target: Option<&str>,
        from: &str,
        at: Option<i64>,
    ) -> Result<Option<(CheckRecord, bool)>, ProviderError> {
        if let Some(t) = target {
            if let Some(rec) = self.check_of(room, t).await? {
                if self.is_open(rec.rc).await? {
                    return Ok(Some((rec, true)));
                }
            }
        }
        let Some(latest) = self.latest_check(room).await? else {
            return Ok(None);
        };
        if latest.to.as_deref().is_some_and(|to| to != from) {
            return Ok(None);
        }
        match (at, latest.ts) {
            (Some(at), Some(check)) if at >= check => {}
            _ => return Ok(None),
        }
        if self.is_open(latest.rc).await? {
            return Ok(Some((latest, false)));
        }
        let open = self.earlier_checks(room, &latest).await?.into_iter().next();
        Ok(Some((open.unwrap_or(latest), false)))
    }

    async fn is_open(&self, rc: i64) -> Result<bool, ProviderError> {
        Ok(self
            .store
            .roll_call(RollCallId(rc))
            .await
            .map_err(store_error)?
            .is_some_and(|r| r.state == crate::rollcall::RollCallState::Open))
    }

    /// The checks sent in `room` before `rec`, newest first (at most [`EARLIER_CHECKS`]): what
    /// has been read or answered after them has been seen after them too.
    async fn earlier_checks(
        &self,
        room: &str,
        rec: &CheckRecord,
    ) -> Result<Vec<CheckRecord>, ProviderError> {
        let mut out: Vec<CheckRecord> = Vec::new();
        let mut seen = std::collections::HashSet::from([rec.rc]);
        let mut next = rec.prev.clone();
        while let Some(event) = next.take() {
            if out.len() >= EARLIER_CHECKS {
                break;
            }
            let Some(earlier) = self.check_of(room, &event).await? else {
                break;
            };
            // A closed roll call's record is evidence and stays as it was; older checks are
            // older still. A roll call seen twice means the chain loops: stop.
            if !self.is_open(earlier.rc).await? || !seen.insert(earlier.rc) {
                break;
            }
            next = earlier.prev.clone();
            out.push(earlier);
        }
        Ok(out)
    }

    /// Read events for the checks before `rec` (see [`Self::earlier_checks`]).
    async fn push_earlier_reads(
        &self,
        room: &str,
        rec: &CheckRecord,
        base: &InboundEvent,
        out: &mut Vec<InboundEvent>,
    ) -> Result<(), ProviderError> {
        for earlier in self.earlier_checks(room, rec).await? {
            if earlier.rc == rec.rc {
                continue;
            }
            out.push(InboundEvent {
                event_id: format!("{}:rc{}", base.event_id, earlier.rc),
                roll_call_id: Some(RollCallId(earlier.rc)),
                from: base.from.clone(),
                kind: InboundKind::Read,
                occurred_at: base.occurred_at,
            });
        }
        Ok(())
    }

    /// Turns one joined room's part of a `/sync` answer into inbound events.
    async fn room_events(
        &self,
        room: &str,
        data: &JoinedRoom,
        out: &mut Vec<InboundEvent>,
    ) -> Result<(), ProviderError> {
        for ev in &data.ephemeral.events {
            if ev["type"] != "m.receipt" {
                continue;
            }
            let Some(content) = ev["content"].as_object() else {
                continue;
            };
            for (target, by_type) in content {
                // Only public receipts reach the bot; m.read.private never arrives here.
                let Some(readers) = by_type["m.read"].as_object() else {
                    continue;
                };
                for (user, receipt) in readers {
                    if *user == self.bot {
                        continue;
                    }
                    let Ok(from) = ChatHandle::parse(user) else {
                        continue;
                    };
                    let Some(rec) = self.read_check(room, target, user).await? else {
                        continue;
                    };
                    let read = InboundEvent {
                        event_id: format!("receipt:{user}:{target}"),
                        roll_call_id: Some(RollCallId(rec.rc)),
                        from,
                        kind: InboundKind::Read,
                        occurred_at: server_time(receipt["ts"].as_i64(), &self.clock),
                    };
                    self.push_earlier_reads(room, &rec, &read, out).await?;
                    out.push(read);
                }
            }
        }
        for ev in &data.timeline.events {
            let (Some(sender), Some(event_id)) = (ev["sender"].as_str(), ev["event_id"].as_str())
            else {
                continue;
            };
            if sender == self.bot {
                continue;
            }
            let Ok(from) = ChatHandle::parse(sender) else {
                continue;
            };
            let at = ev["origin_server_ts"].as_i64();
            let content = &ev["content"];
            let relates = &content["m.relates_to"];
            // What the person did, and the event they did it to, when they named one. An edit
            // (`m.replace`) is read again as an answer from its new content.
            let (target, body, reaction): (Option<&str>, Option<&str>, Option<&str>) =
                match ev["type"].as_str() {
                    Some("m.reaction") if relates["rel_type"] == "m.annotation" => (
                        relates["event_id"].as_str(),
                        None,
                        Some(relates["key"].as_str().unwrap_or("")),
                    ),
                    Some("m.sticker") => (
                        None,
                        None,
                        Some(content["body"].as_str().unwrap_or("sticker")),
                    ),
                    Some("m.room.message") if relates["rel_type"] == "m.replace" => {
                        (None, content["m.new_content"]["body"].as_str(), None)
                    }
                    Some("m.room.message") => (
                        relates["m.in_reply_to"]["event_id"].as_str(),
                        content["body"].as_str(),
                        None,
                    ),
                    // End-to-end encrypted: anpi cannot read it, and says so.
                    Some("m.room.encrypted") => {
                        self.remember_encrypted(sender, room).await?;
                        (None, Some(UNREADABLE), None)
                    }
                    _ => continue,
                };
            let Some((rec, named)) = self.answered_check(room, target, sender, at).await? else {
                continue;
            };
            let kind = match (reaction, body) {
                (Some(key), _) => match option_number(key).and_then(|n| option(&rec.values, n)) {
                    Some(value) => InboundKind::Answer { value },
                    None => InboundKind::Sticker {
                        id: key.to_string(),
                    },
                },
                (None, Some(UNREADABLE)) => InboundKind::Reply {
                    text: UNREADABLE.to_string(),
                },
                (None, Some(body)) => reply_kind(body, &rec.values),
                (None, None) => continue,
            };
            let answer = InboundEvent {
                event_id: event_id.to_string(),
                // Something the person did in the room counts for the newest open roll call
                // they are in (the store's rule for events that name none), unless it answers
                // an open check by name.
                roll_call_id: named.then_some(RollCallId(rec.rc)),
                from,
                kind,
                occurred_at: server_time(at, &self.clock),
            };
            self.push_earlier_reads(room, &rec, &answer, out).await?;
            out.push(answer);
        }
        Ok(())
    }

    async fn sync(&self, since: Option<&str>, wait: Duration) -> Result<Response, ProviderError> {
        let wait = if since.is_some() {
            wait
        } else {
            Duration::ZERO
        };
        let mut req = self
            .client
            .get(self.url(&["sync"]))
            .header(AUTHORIZATION, self.auth.clone())
            .query(&[
                ("filter", self.filter.as_str()),
                ("timeout", &wait.as_millis().to_string()),
            ])
            .timeout(REQUEST_TIMEOUT + wait);
        if let Some(s) = since {
            req = req.query(&[("since", s)]);
        }
        req.send().await.map_err(transport_error)
    }
}

/// A Matrix error body.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: String,
    #[serde(default)]
    error: String,
    retry_after_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct SyncResponse {
    next_batch: String,
    #[serde(default)]
    rooms: SyncRooms,
}

#[derive(Debug, Default, Deserialize)]
struct SyncRooms {
    #[serde(default)]
    join: HashMap<String, JoinedRoom>,
}

#[derive(Debug, Default, Deserialize)]
struct JoinedRoom {
    #[serde(default)]
    timeline: Events,
    #[serde(default)]
    ephemeral: Events,
}

#[derive(Debug, Default, Deserialize)]
struct Events {
    /// Kept raw so that one event this adapter cannot read does not block the feed.
    #[serde(default)]
    events: Vec<Value>,
}

fn store_error(e: StoreError) -> ProviderError {
    ProviderError::Retryable {
        after: None,
        reason: format!("Matrix state in the store: {e}"),
    }
}

fn server_time(ms: Option<i64>, clock: &SharedClock) -> DateTime<Utc> {
    ms.and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(|| clock.now())
}

/// A request that got no HTTP answer.
fn transport_error(e: reqwest::Error) -> ProviderError {
    if e.is_builder() {
        return ProviderError::Permanent(format!("Matrix request cannot be built: {e}"));
    }
    let reason = if e.is_timeout() {
        "homeserver did not answer in time".to_string()
    } else if e.is_connect() {
        format!("cannot connect to the homeserver: {e}")
    } else {
        format!("homeserver request failed: {e}")
    };
    ProviderError::Retryable {
        after: None,
        reason,
    }
}

fn retry_after_header(resp: &Response) -> Option<Duration> {
    let secs: f64 = resp
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Classifies an answer that is not a success. `what` names the request for the reason.
async fn refusal(resp: Response, what: &str) -> ProviderError {
    let status = resp.status();
    let header_wait = retry_after_header(&resp);
    let text = resp.text().await.unwrap_or_default();
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
    classify(status, header_wait, &body, what)
}

fn classify(
    status: StatusCode,
    header_wait: Option<Duration>,
    body: &ErrorBody,
    what: &str,
) -> ProviderError {
    if status == StatusCode::TOO_MANY_REQUESTS || body.errcode == "M_LIMIT_EXCEEDED" {
        let reset = body
            .retry_after_ms
            .map(Duration::from_millis)
            .or(header_wait)
            .unwrap_or(Duration::from_secs(1));
        return ProviderError::RateLimited { reset };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return ProviderError::Retryable {
            after: header_wait,
            reason: format!("{what}: homeserver answered {status}"),
        };
    }
    let detail: String = format!("{} {}", body.errcode, body.error)
        .trim()
        .chars()
        .take(200)
        .collect();
    ProviderError::Permanent(match status {
        StatusCode::UNAUTHORIZED => {
            format!("{what}: the homeserver refused the bot's access token ({detail})")
        }
        StatusCode::FORBIDDEN => {
            format!("{what}: the bot may not do this in the room ({detail})")
        }
        StatusCode::NOT_FOUND => format!("{what}: unknown room or user ({detail})"),
        _ => format!("{what}: homeserver answered {status} ({detail})"),
    })
}

/// What HQ reads for a reply anpi cannot decrypt.
pub const UNREADABLE: &str =
    "暗号化された返信（anpi には読めません）/ encrypted reply: anpi cannot read it";

/// A reply's text: one that starts with an option's number ("1", "１", "①", "1 無事です",
/// "1. ok") is that answer; anything else is a free reply.
fn reply_kind(body: &str, values: &[String]) -> InboundKind {
    // A rich reply quotes the original in lines starting with "> ", then a blank line.
    let own: Vec<&str> = body
        .lines()
        .skip_while(|l| l.starts_with('>'))
        .skip_while(|l| l.trim().is_empty())
        .collect();
    let text = own.join("\n").trim().to_string();
    if let Some(value) = option_number(&text).and_then(|n| option(values, n)) {
        return InboundKind::Answer { value };
    }
    InboundKind::Reply { text }
}

/// The value of option `n` (numbered from 1).
fn option(values: &[String], n: usize) -> Option<String> {
    n.checked_sub(1).and_then(|i| values.get(i)).cloned()
}

/// The option number `text` starts with: a circled digit (①, ❶) whatever follows, or digits
/// in any width (1, １, a keycap 1️⃣) followed by nothing, a space or punctuation, so that
/// "1時間後に行きます" is not option 1.
fn option_number(text: &str) -> Option<usize> {
    let text = text.trim();
    let first = text.chars().next()?;
    let circled = match first {
        '\u{2460}'..='\u{2473}' => Some(first as u32 - 0x2460 + 1),
        '\u{2776}'..='\u{277F}' => Some(first as u32 - 0x2776 + 1),
        '\u{2780}'..='\u{2789}' => Some(first as u32 - 0x2780 + 1),
        '\u{278A}'..='\u{2793}' => Some(first as u32 - 0x278A + 1),
        _ => None,
    };
    if let Some(n) = circled {
        return Some(n as usize);
    }
    let norm: String = text.nfkc().collect();
    let digits: String = norm.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > 2 {
        return None;
    }
    let rest = norm[digits.len()..].trim_start_matches(['\u{FE0F}', '\u{20E3}']);
    match rest.chars().next() {
        None => {}
        Some(c) if c.is_whitespace() || c.is_ascii_punctuation() => {}
        Some('、' | '。' | '：' | '・' | '）' | '番') => {}
        Some(_) => return None,
    }
    digits.parse().ok()
}

#[async_trait]
impl ChatProvider for MatrixProvider {
    fn name(&self) -> &str {
        NAME
    }

    async fn startup_notes(&self) -> Vec<String> {
        let rooms = match self.encrypted_rooms().await {
            Ok(r) => r,
            Err(e) => {
                return vec![format!(
                    "Matrix: cannot read which rooms are encrypted: {e}"
                )]
            }
        };
        if rooms.is_empty() {
            return Vec::new();
        }
        let mut people: Vec<&String> = rooms.keys().collect();
        people.sort();
        let list: Vec<String> = people
            .iter()
            .take(20)
            .map(|p| format!("{p} ({})", rooms[*p]))
            .collect();
        let more = people.len().saturating_sub(20);
        vec![format!(
            "暗号化された Matrix ルームが {n} 件あります。返信の内容は読めません（既読とリアクションは数えます）。\
             / {n} Matrix DM rooms are end-to-end encrypted: anpi cannot read replies there \
             (read receipts and reactions still count; an encrypted reply shows as unreadable): {}{}",
            list.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
            n = rooms.len(),
        )]
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_receipts: true,
            buttons: false,
            idempotent_sends: true,
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "matrix.send",
        skip_all,
        fields(roll_call = %msg.roll_call_id, delivery = msg.delivery_id)
    )]
    async fn send(&self, msg: &OutboundMessage) -> Result<Sent, ProviderError> {
        let Some(room) = self.dm_room(&msg.to).await? else {
            if !self.user_exists(msg.to.as_str()).await? {
                return Err(ProviderError::Permanent(format!(
                    "{}: {}",
                    Unreachable::UnknownUser,
                    msg.to
                )));
            }
            return Err(ProviderError::Permanent(format!(
                "no Matrix DM room with {} (run `anpi matrix prepare`)",
                msg.to
            )));
        };
        // A room the person is not in reaches no one: they go on the call list now, with the
        // reason, instead of waiting out the deadline as "never read". (The homeserver accepts
        // a post to a room nobody else is in.) A re-send skips the check: it follows a send
        // that found them in the room.
        if !msg.resend {
            if let Some(why) = self.unreachable(&room, msg.to.as_str()).await? {
                return Err(ProviderError::Permanent(format!(
                    "{why}: {} (DM room {room}; `anpi matrix prepare` lists and re-invites)",
                    msg.to
                )));
            }
        }
        // One transaction id per delivery: a retry of the same delivery is the same send.
        // A re-send is a second message, not a retry of the first.
        let again = if msg.resend { "-again" } else { "" };
        let txn = format!("anpi-{}-{}{again}", msg.roll_call_id, msg.delivery_id);
        let content = json!({
            "msgtype": "m.text",
            "body": msg.asks.compose(
                &msg.text,
                crate::scenario::RouteTraits::direct(&self.capabilities()),
                &msg.buttons
            ),
            ROLL_CALL_KEY: msg.roll_call_id.0,
        });
        let resp = self
            .client
            .put(self.url(&["rooms", &room, "send", "m.room.message", &txn]))
            .header(AUTHORIZATION, self.auth.clone())
            .json(&content)
            .send()
            .await
            .map_err(transport_error)?;
        if !resp.status().is_success() {
            return Err(refusal(resp, "send").await);
        }
        // Accepted: from here on nothing may turn this into a failure.
        let event_id = match resp.bytes().await {
            Ok(b) => serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["event_id"].as_str().map(str::to_string)),
            Err(_) => None,
        };
        if let Some(ev) = &event_id {
            let written = async {
                // A retried send the homeserver recognised (same transaction id) returns the
                // event it already has: its record, and the room's order, stay as they are.
                if self.stored_check(ev).await?.is_some() {
                    return Ok(());
                }
                let prev = self
                    .newest_check(&room)
                    .await?
                    .map(|(event, _)| event)
                    .filter(|p| p != ev);
                let rec = CheckRecord {
                    rc: msg.roll_call_id.0,
                    to: Some(msg.to.as_str().to_string()),
                    values: msg.buttons.iter().map(|b| b.value.clone()).collect(),
                    ts: None,
                    prev,
                };
                self.record_check(&room, ev, &rec, true).await
            };
            if let Err(e) = written.await {
                tracing::warn!(error = %e, "sent, but could not remember the check's event");
            }
        }
        Ok(Sent {
            message_id: event_id,
        })
    }

    #[tracing::instrument(level = "debug", name = "matrix.sync", skip(self))]
    async fn poll_events(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<EventBatch, ProviderError> {
        let mut events = Vec::new();
        let mut wait = wait;
        // The first poll of this process also reads every room's current receipts (a full
        // /sync), so nothing a stored cursor could have missed stays missed after a restart.
        if cursor.is_some() && !self.reconciled.load(std::sync::atomic::Ordering::Relaxed) {
            let full = self.sync(None, Duration::ZERO).await?;
            if !full.status().is_success() {
                return Err(refusal(full, "sync").await);
            }
            for (room, data) in &read_sync(full).await?.rooms.join {
                self.room_events(room, data, &mut events).await?;
            }
            wait = Duration::ZERO;
        }
        let mut resp = self.sync(cursor, wait).await?;
        if cursor.is_some() && resp.status().is_client_error() && resp.status() != 429 {
            // A cursor the homeserver no longer knows: start over from the current state.
            tracing::warn!(status = %resp.status(), "sync cursor refused; doing a full sync");
            resp = self.sync(None, wait).await?;
        }
        if !resp.status().is_success() {
            return Err(refusal(resp, "sync").await);
        }
        let sync = read_sync(resp).await?;
        for (room, data) in &sync.rooms.join {
            self.room_events(room, data, &mut events).await?;
        }
        self.reconciled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(EventBatch {
            events,
            cursor: Some(sync.next_batch),
        })
    }
}

async fn read_sync(resp: Response) -> Result<SyncResponse, ProviderError> {
    let bytes = resp.bytes().await.map_err(transport_error)?;
    serde_json::from_slice(&bytes).map_err(|e| ProviderError::Retryable {
        after: None,
        reason: format!("homeserver sent an unreadable /sync answer: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::Path;
    use axum::http::StatusCode as S;
    use axum::response::IntoResponse;
    use axum::routing::{get, put};
    use axum::{Json, Router};

    use super::*;
    use crate::clock::ManualClock;
    use crate::providers::AnswerButton;

    fn buttons() -> Vec<AnswerButton> {
        vec![
            AnswerButton {
                label: "無事 / Safe".into(),
                value: "safe".into(),
            },
            AnswerButton {
                label: "負傷 / Injured".into(),
                value: "injured".into(),
            },
        ]
    }

    fn message() -> OutboundMessage {
        OutboundMessage {
            delivery_id: 42,
            roll_call_id: RollCallId(7),
            to: ChatHandle::parse("@s001:hs.test").unwrap(),
            text: "【安否確認】地震がありました。".into(),
            buttons: buttons(),
            resend: false,
            asks: Default::default(),
        }
    }

    struct Fixture {
        provider: MatrixProvider,
        store: SharedStore,
        _tmp: tempfile::TempDir,
    }

    async fn fixture(app: Router) -> Fixture {
        // Everyone is in their room unless a test says otherwise.
        let app = app
            .route(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}",
                get(|| async { Json(json!({"membership": "join"})) }),
            )
            .route(
                "/_matrix/client/v3/profile/{user}",
                get(|| async { Json(json!({"displayname": "someone"})) }),
            );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::open(&format!("sqlite://{}", tmp.path().join("t.db").display()))
            .await
            .unwrap();
        let config = MatrixConfig {
            homeserver: url,
            user_id: "@anpi:hs.test".into(),
            access_token_file: None,
            access_token: Some(Secret::new("syt_s3cret")),
            sync_timeout: Duration::from_secs(1),
            rate_limit_per_minute: 0,
            max_in_flight: 4,
        };
        let clock: SharedClock = Arc::new(ManualClock::new(Utc::now()));
        let provider = MatrixProvider::new(
            &config,
            &config.access_token().unwrap(),
            store.clone(),
            clock,
        )
        .unwrap();
        Fixture {
            provider,
            store,
            _tmp: tmp,
        }
    }

    async fn with_room(f: &Fixture) {
        f.store
            .set_matrix_room("@s001:hs.test", "!dm:hs.test", 0)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn send_puts_an_m_text_with_options_under_a_delivery_txn_id() {
        let seen: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
        let s2 = seen.clone();
        let app = Router::new().route(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
            put(
                move |Path((room, txn)): Path<(String, String)>, Json(body): Json<Value>| {
                    let s2 = s2.clone();
                    async move {
                        s2.lock().unwrap().push((room, txn, body));
                        Json(json!({"event_id": "$ev1"}))
                    }
                },
            ),
        );
        let f = fixture(app).await;
        with_room(&f).await;
        let sent = f.provider.send(&message()).await.unwrap();
        assert_eq!(sent.message_id.as_deref(), Some("$ev1"));
        f.provider.send(&message()).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, "!dm:hs.test");
        assert_eq!(seen[0].1, "anpi-7-42");
        assert_eq!(seen[0].1, seen[1].1, "a retry reuses the transaction id");
        let body = &seen[0].2;
        assert_eq!(body["msgtype"], "m.text");
        assert_eq!(body[ROLL_CALL_KEY], 7);
        let text = body["body"].as_str().unwrap();
        assert!(text.starts_with("【安否確認】"), "{text}");
        assert!(text.contains("1 無事 / 2 負傷"), "{text}");
        assert!(text.contains("1 Safe / 2 Injured"), "{text}");
        // The check is remembered for the receipts that come back.
        let rec = f.store.matrix_check("$ev1").await.unwrap().unwrap();
        assert_eq!(rec.roll_call_id, 7);
        assert_eq!(rec.values, ["safe", "injured"]);
        assert_eq!(
            f.store
                .newest_matrix_check("!dm:hs.test")
                .await
                .unwrap()
                .map(|c| c.event_id)
                .as_deref(),
            Some("$ev1")
        );
    }

    #[tokio::test]
    async fn a_receipt_on_a_later_check_confirms_the_earlier_ones_in_the_room() {
        // A safety check (roll call 7), then an announcement (roll call 8) in the same DM
        // room; the person opens the chat and their client sends one receipt, on the newest.
        let next = Arc::new(Mutex::new(0u32));
        let n2 = next.clone();
        let sync = json!({
            "next_batch": "s2",
            "rooms": {"join": {"!dm:hs.test": {
                "ephemeral": {"events": [{"type": "m.receipt", "content": {
                    "$ev2": {"m.read": {"@s001:hs.test": {"ts": 1_700_000_000_500_i64}}}
                }}]},
                "timeline": {"events": []}
            }}}
        });
        let app = Router::new()
            .route(
                "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
                put(move || {
                    let n2 = n2.clone();
                    async move {
                        let mut n = n2.lock().unwrap();
                        *n += 1;
                        Json(json!({"event_id": format!("$ev{n}")}))
                    }
                }),
            )
            .route(
                "/_matrix/client/v3/sync",
                get(move || {
                    let sync = sync.clone();
                    async move { Json(sync) }
                }),
            );
        let f = fixture(app).await;
        with_room(&f).await;
        // Two open roll calls, the check (first) and the announcement (second).
        let scenario = crate::scenario::Scenario::parse(
            include_str!("../../scenarios/drill.toml"),
            "scenarios/drill.toml",
        )
        .unwrap();
        let contacts = crate::contacts::synthetic::generate(1, 1).contacts;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (new, recipients) = crate::rollcall::plan(&scenario, &contacts, NAME, None, None);
            ids.push(
                f.store
                    .create_roll_call(&new, &recipients, 0)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let mut msg = message();
        msg.roll_call_id = ids[0];
        f.provider.send(&msg).await.unwrap();
        msg.roll_call_id = ids[1];
        msg.delivery_id = 43;
        f.provider.send(&msg).await.unwrap();
        let poll = || async {
            let batch = f.provider.poll_events(None, Duration::ZERO).await.unwrap();
            let mut got: Vec<(Option<RollCallId>, InboundKind)> = batch
                .events
                .iter()
                .map(|e| (e.roll_call_id, e.kind.clone()))
                .collect();
            got.sort_by_key(|g| g.0);
            got
        };
        assert_eq!(
            poll().await,
            vec![
                (Some(ids[0]), InboundKind::Read),
                (Some(ids[1]), InboundKind::Read),
            ]
        );
        assert_eq!(*next.lock().unwrap(), 2);
        // Once the check is closed, its record stays as it was.
        f.store.close_roll_call(ids[0], 1).await.unwrap();
        assert_eq!(poll().await, vec![(Some(ids[1]), InboundKind::Read)]);
    }

    #[tokio::test]
    async fn errors_are_classified_once() {
        let app = Router::new().route(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
            put(|Path((room, _)): Path<(String, String)>| async move {
                match room.as_str() {
                    "!busy:hs.test" => (
                        S::TOO_MANY_REQUESTS,
                        r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":2500}"#,
                    )
                        .into_response(),
                    "!down:hs.test" => (S::BAD_GATEWAY, "").into_response(),
                    _ => (
                        S::FORBIDDEN,
                        r#"{"errcode":"M_FORBIDDEN","error":"User not in room"}"#,
                    )
                        .into_response(),
                }
            }),
        );
        let f = fixture(app).await;
        let mut msg = message();
        // No DM room: permanent, with what to do about it.
        match f.provider.send(&msg).await {
            Err(ProviderError::Permanent(r)) => {
                assert!(r.contains("anpi matrix prepare"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        for (user, room) in [
            ("@busy:hs.test", "!busy:hs.test"),
            ("@down:hs.test", "!down:hs.test"),
            ("@gone:hs.test", "!gone:hs.test"),
        ] {
            f.store.set_matrix_room(user, room, 0).await.unwrap();
        }
        msg.to = ChatHandle::parse("@busy:hs.test").unwrap();
        assert_eq!(
            f.provider.send(&msg).await,
            Err(ProviderError::RateLimited {
                reset: Duration::from_millis(2500)
            })
        );
        msg.to = ChatHandle::parse("@down:hs.test").unwrap();
        assert!(matches!(
            f.provider.send(&msg).await,
            Err(ProviderError::Retryable { .. })
        ));
        msg.to = ChatHandle::parse("@gone:hs.test").unwrap();
        match f.provider.send(&msg).await {
            Err(ProviderError::Permanent(r)) => assert!(r.contains("M_FORBIDDEN"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn sync_maps_receipts_replies_and_reactions_to_their_roll_call() {
        let sync = json!({
            "next_batch": "s2",
            "rooms": {"join": {"!dm:hs.test": {
                "ephemeral": {"events": [{"type": "m.receipt", "content": {
                    "$check": {"m.read": {
                        "@s001:hs.test": {"ts": 1_700_000_000_500i64},
                        "@anpi:hs.test": {"ts": 1_700_000_000_000i64}
                    }},
                    "$old": {"m.read": {"@s001:hs.test": {"ts": 1_600_000_000_000i64}}}
                }}]},
                "timeline": {"events": [
                    {"type": "m.room.message", "event_id": "$r1", "sender": "@s001:hs.test",
                     "origin_server_ts": 1_700_000_001_000i64,
                     "content": {"msgtype": "m.text", "body": "２"}},
                    {"type": "m.room.message", "event_id": "$r0", "sender": "@s001:hs.test",
                     "origin_server_ts": 1_600_000_000_000i64,
                     "content": {"msgtype": "m.text", "body": "old chat"}},
                    {"type": "m.reaction", "event_id": "$x1", "sender": "@s001:hs.test",
                     "origin_server_ts": 1_700_000_002_000i64,
                     "content": {"m.relates_to": {"rel_type": "m.annotation",
                        "event_id": "$check", "key": "👍"}}}
                ]}
            }}}
        });
        let app = Router::new()
            .route(
                "/_matrix/client/v3/sync",
                get(move || {
                    let sync = sync.clone();
                    async move { Json(sync) }
                }),
            )
            .route(
                "/_matrix/client/v3/rooms/{room}/event/{event}",
                get(|Path((_, event)): Path<(String, String)>| async move {
                    let ts: i64 = if event == "$old" {
                        1_600_000_000_000
                    } else {
                        1_700_000_000_000
                    };
                    Json(json!({"event_id": event, "sender": "@someone:hs.test",
                        "origin_server_ts": ts, "content": {}}))
                }),
            );
        let f = fixture(app).await;
        with_room(&f).await;
        let rec = MatrixCheck {
            event_id: "$check".into(),
            room_id: Some("!dm:hs.test".into()),
            roll_call_id: 7,
            to: Some("@s001:hs.test".into()),
            values: vec!["safe".into(), "injured".into()],
            origin_ts: Some(1_700_000_000_000),
            prev: None,
            sent_at: Some(0),
        };
        f.store.record_matrix_check(&rec).await.unwrap();
        let batch = f.provider.poll_events(None, Duration::ZERO).await.unwrap();
        assert_eq!(batch.cursor.as_deref(), Some("s2"));
        let mut got: Vec<(String, InboundKind)> = batch
            .events
            .iter()
            .map(|e| {
                // A receipt names the check it is on; what the person wrote or reacted counts
                // for the newest open roll call they are in (roll call 7 is not open here).
                let named = e.kind == InboundKind::Read;
                assert_eq!(e.roll_call_id, named.then_some(RollCallId(7)), "{e:?}");
                assert_eq!(e.from.as_str(), "@s001:hs.test");
                (e.event_id.clone(), e.kind.clone())
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                (
                    "$r1".into(),
                    InboundKind::Answer {
                        value: "injured".into()
                    }
                ),
                ("$x1".into(), InboundKind::Sticker { id: "👍".into() }),
                ("receipt:@s001:hs.test:$check".into(), InboundKind::Read),
            ],
            "the bot's own receipt, a receipt and a message from before the check are ignored"
        );
    }

    #[test]
    fn replies_with_a_number_are_answers_and_quotes_are_stripped() {
        let values = vec!["safe".to_string(), "injured".to_string()];
        assert_eq!(
            reply_kind("1", &values),
            InboundKind::Answer {
                value: "safe".into()
            }
        );
        assert_eq!(
            reply_kind("> <@anpi:hs> 【安否確認】...\n\n１", &values),
            InboundKind::Answer {
                value: "safe".into()
            }
        );
        assert_eq!(
            reply_kind("3", &values),
            InboundKind::Reply { text: "3".into() }
        );
        assert_eq!(
            reply_kind("家族も無事です", &values),
            InboundKind::Reply {
                text: "家族も無事です".into()
            }
        );
    }

    #[test]
    fn leading_circled_and_full_width_digits_are_options_but_times_are_not() {
        let values: Vec<String> = ["safe", "can_work", "cannot_work", "injured"]
            .map(String::from)
            .to_vec();
        let answer = |v: &str| InboundKind::Answer { value: v.into() };
        for (text, want) in [
            ("1 無事です", "safe"),
            ("１　無事です", "safe"),
            ("①", "safe"),
            ("①無事", "safe"),
            ("❹", "injured"),
            ("4.", "injured"),
            ("２、出動できます", "can_work"),
            ("1️⃣", "safe"),
        ] {
            assert_eq!(reply_kind(text, &values), answer(want), "{text}");
        }
        for text in ["1時間後に行きます", "10", "5", "12345", "無事 1"] {
            assert_eq!(
                reply_kind(text, &values),
                InboundKind::Reply { text: text.into() },
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_person_not_in_their_room_is_a_permanent_failure_naming_why() {
        let app = Router::new()
            .route(
                "/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}",
                get(|Path((room, _)): Path<(String, String)>| async move {
                    match room.as_str() {
                        "!left:hs.test" => Json(json!({"membership": "leave"})).into_response(),
                        "!invited:hs.test" | "!nosuch:hs.test" => {
                            Json(json!({"membership": "invite"})).into_response()
                        }
                        _ => (S::NOT_FOUND, r#"{"errcode":"M_NOT_FOUND"}"#).into_response(),
                    }
                }),
            )
            .route(
                "/_matrix/client/v3/profile/{user}",
                get(|Path(user): Path<String>| async move {
                    if user.starts_with("@nosuch") {
                        (S::NOT_FOUND, r#"{"errcode":"M_NOT_FOUND"}"#).into_response()
                    } else {
                        Json(json!({"displayname": "x"})).into_response()
                    }
                }),
            )
            .route(
                "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
                put(|| async { Json(json!({"event_id": "$never"})) }),
            );
        // Built without `fixture`'s "everyone joined" route.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let f = fixture(Router::new()).await;
        let config = MatrixConfig {
            homeserver: url,
            user_id: "@anpi:hs.test".into(),
            access_token_file: None,
            access_token: Some(Secret::new("syt_s3cret")),
            sync_timeout: Duration::from_secs(1),
            rate_limit_per_minute: 0,
            max_in_flight: 4,
        };
        let clock: SharedClock = Arc::new(ManualClock::new(Utc::now()));
        let provider = MatrixProvider::new(
            &config,
            &config.access_token().unwrap(),
            f.store.clone(),
            clock,
        )
        .unwrap();
        let mut msg = message();
        for (who, want) in [
            ("left", "left the room"),
            ("invited", "never accepted the invite"),
            ("nosuch", "unknown user"),
            ("stranger", "not invited"),
        ] {
            let user = format!("@{who}:hs.test");
            f.store
                .set_matrix_room(&user, &format!("!{who}:hs.test"), 0)
                .await
                .unwrap();
            msg.to = ChatHandle::parse(&user).unwrap();
            match provider.send(&msg).await {
                Err(ProviderError::Permanent(r)) => assert!(r.contains(want), "{who}: {r}"),
                other => panic!("{who}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn capabilities_and_debug_do_not_leak_the_token() {
        let f = fixture(Router::new()).await;
        let c = f.provider.capabilities();
        assert!(c.read_receipts && c.idempotent_sends && !c.buttons);
        assert_eq!(f.provider.name(), "matrix");
        assert!(!format!("{:?}", f.provider).contains("s3cret"));
        assert_eq!(
            f.provider.url(&["rooms", "!a:b", "event", "$e/1"]).path(),
            "/_matrix/client/v3/rooms/!a:b/event/$e%2F1"
        );
    }
}
