//! The LINE WORKS adapter (API 2.0): service-account JWT auth with a cached access token, 1:1
//! talk messages with quick-reply answer buttons, room messages, must-read board posts, and
//! readers polling of those posts as the one per-person read signal the platform gives. Also
//! the callback wire format (signature check and parsing) that `POST /callbacks/lineworks`
//! uses.
//!
//! Invariants: every HTTP outcome is classified here, once (429 -> `RateLimited` per
//! `rateLimit-reset`, 5xx -> `Retryable`, other 4xx -> `Permanent`); a 401 leads to exactly one
//! token refresh and one retry; a request the platform accepted is never reported as failed;
//! secrets (client secret, private key, bot secret, tokens) never reach `Debug` or logs;
//! readers polling spends at most half the board API's budget. Talk messages have no read
//! receipt on this platform, and none is invented.
//!
//! # Layout
//! - `auth`: the service-account JWT, the cached access token, and the one refresh on a 401.
//! - `send`: talk messages to a person or a room, with quick-reply answer buttons.
//! - `board`: must-read board posts and the readers feed that follows them.
//! - `callbacks`: what the platform posts to `POST /callbacks/lineworks`: signature and body.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Response, StatusCode};
use serde_json::Value;

use super::http::{self, Platform};
use super::{
    BroadcastRequest, Broadcasted, Capabilities, ChatProvider, EventBatch, OutboundMessage,
    ProviderError, RateLimit, Route, RouteKind, Sent,
};
use crate::clock::{Millis, SharedClock};
use crate::config::Secret;
use crate::health::{Component, Health};
use crate::ids::RollCallId;
use crate::ratelimit::TokenBucket;

mod auth;
mod board;
mod callbacks;
mod send;
#[cfg(test)]
mod tests;

use auth::TokenCache;
use board::{Reported, WatchedPost};

pub use auth::AssertionClaims;
pub use board::{board_post_body, MAX_MUST_READ_DAYS};
pub use callbacks::{parse_callback, sign, verify, CallbackError, Parsed, CALLBACK_BODY_LIMIT};
pub use send::{parse_postback, postback_data, MAX_QUICK_REPLIES, MAX_TEXT_CHARS};

/// Per-request budget.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Share of the platform's limit anpi plans with. A request leaves the token bucket and
/// reaches the platform a moment later, and that moment varies (the first ones wait for the
/// access token), so a bucket that spends exactly the limit can land one request too many in
/// the platform's window; 5% below absorbs that.
const LIMIT_SHARE: f64 = 0.95;

/// What is percent-encoded in a path segment: everything but letters, digits and `-._~`
/// (as `encodeURIComponent` and RFC 3986's unreserved characters).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `base` followed by `segments`, each percent-encoded ([`PATH_SEGMENT`]).
fn api_url(base: &str, segments: &[&str]) -> String {
    let mut url = base.trim_end_matches('/').to_string();
    for s in segments {
        url.push('/');
        url.extend(percent_encoding::utf8_percent_encode(s, PATH_SEGMENT));
    }
    url
}

/// How a 404 (unknown user, room, board or post) begins its reason.
const UNKNOWN_USER: &str = "unknown user or room on LINE WORKS";

/// The platform as reasons name it; a 429's reset is its `rateLimit-reset` header (seconds),
/// else `Retry-After`, else 5 seconds.
const LINE_WORKS: Platform = Platform {
    name: "LINE WORKS",
    the: "LINE WORKS",
    reset_header: Some("ratelimit-reset"),
    default_reset: Duration::from_secs(5),
};

/// Everything the adapter needs, from `[providers.lineworks]`.
#[derive(Clone)]
pub struct LineWorksSettings {
    /// `https://www.worksapis.com/v1.0` (or a stand-in).
    pub api_base: String,
    /// `https://auth.worksmobile.com/oauth2/v2.0/token` (or a stand-in).
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// `xxxx.serviceaccount@example`.
    pub service_account: String,
    /// The service account's private key, PEM.
    pub private_key_pem: Secret,
    pub scope: String,
    pub bot_id: String,
    /// The board for must-read posts; without one there is no broadcast route.
    pub board_id: Option<String>,
    /// Department -> channel id of the bot's room for it.
    pub rooms: BTreeMap<String, String>,
    /// Per API operation (messages): 240/min on paid plans.
    pub rate_limit: RateLimit,
    /// Board API operations: 60/min.
    pub board_rate_limit: RateLimit,
    /// A room this large or larger gets no push notification.
    pub room_push_limit: usize,
    pub max_in_flight: usize,
    /// How long after posting a board post's readers are still polled.
    pub readers_poll_for: Duration,
}

impl fmt::Debug for LineWorksSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineWorksSettings")
            .field("api_base", &self.api_base)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("service_account", &self.service_account)
            .field("private_key_pem", &self.private_key_pem)
            .field("bot_id", &self.bot_id)
            .field("board_id", &self.board_id)
            .field("rooms", &self.rooms)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// What can be wrong with the settings before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum LineWorksError {
    #[error("the private key is not an RSA key in PEM form: {0}")]
    PrivateKey(String),
}

/// A client for the LINE WORKS API.
pub struct LineWorksProvider {
    client: reqwest::Client,
    settings: LineWorksSettings,
    key: jsonwebtoken::EncodingKey,
    clock: SharedClock,
    token: tokio::sync::Mutex<TokenCache>,
    /// Board post creation.
    board_posts: TokenBucket,
    /// Readers polling: half the board budget, the rate advised for sustained use.
    board_readers: TokenBucket,
    posts: Mutex<Vec<WatchedPost>>,
    /// (post, user) reads already reported since start; a restart reports them again and the
    /// event log drops the replays.
    seen: Mutex<Reported>,
    /// Where token, readers, board and send trouble is reported ([`crate::health`]).
    health: Option<Arc<Health>>,
}

impl fmt::Debug for LineWorksProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineWorksProvider")
            .field("settings", &self.settings)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl LineWorksProvider {
    pub fn new(settings: LineWorksSettings, clock: SharedClock) -> Result<Self, LineWorksError> {
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(settings.private_key_pem.expose().as_bytes())
                .map_err(|e| LineWorksError::PrivateKey(e.to_string()))?;
        let max = settings.max_in_flight.max(1);
        let client = http::client(max, REQUEST_TIMEOUT);
        let half = RateLimit {
            requests: (settings.board_rate_limit.requests / 2).max(1),
            per: settings.board_rate_limit.per,
        };
        Ok(Self {
            client,
            key,
            board_posts: TokenBucket::new(settings.board_rate_limit, clock.clone()),
            board_readers: TokenBucket::new(half, clock.clone()),
            clock,
            settings,
            token: tokio::sync::Mutex::new(TokenCache::default()),
            posts: Mutex::new(Vec::new()),
            seen: Mutex::new(Reported::default()),
            health: None,
        })
    }

    /// Reports token, readers, board and send trouble to `health`.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// Tells health how an operation went. A rate limit is the platform pacing anpi, and an
    /// unknown user is one person's problem: neither is a failure of the component.
    fn report<T>(&self, c: Component, res: &Result<T, ProviderError>) {
        let Some(h) = &self.health else { return };
        match res {
            Ok(_) => h.ok(c),
            Err(ProviderError::RateLimited { .. }) => {}
            Err(ProviderError::Permanent(r)) if r.starts_with(UNKNOWN_USER) => {}
            // Refused credentials do not pass by themselves: HQ is told at once, as the
            // login's trouble only, not once more for each thing it stops.
            Err(e @ ProviderError::Unauthorized { .. }) if c == Component::Token => {
                h.failing_now(c, e.to_string())
            }
            Err(ProviderError::Unauthorized { .. }) => {}
            Err(e) => h.failing(c, e.to_string()),
        }
    }

    /// The address of `segments` under the API base, each segment percent-encoded as the
    /// reference asks of ids in a path ("userId: ユーザーを特定する ID (URL エンコードする)",
    /// <https://developers.worksmobile.com/jp/docs/bot-user-message-send>): a user id may be a
    /// login e-mail, and a `?` or `#` in an id must not end the path.
    fn api(&self, segments: &[&str]) -> String {
        api_url(&self.settings.api_base, segments)
    }
}

#[async_trait]
impl ChatProvider for LineWorksProvider {
    fn name(&self) -> &str {
        "lineworks"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Talk messages have no read receipt; reads come only from board posts.
            read_receipts: false,
            buttons: true,
            idempotent_sends: false,
            rate_limit: Some(RateLimit {
                requests: ((self.settings.rate_limit.requests as f64 * LIMIT_SHARE).floor() as u32)
                    .max(1),
                per: self.settings.rate_limit.per,
            }),
            max_in_flight: self.settings.max_in_flight,
        }
    }

    fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        if self.settings.board_id.is_some() {
            routes.push(Route {
                kind: RouteKind::Broadcast,
                rate_limit: Some(self.settings.board_rate_limit),
                groups: Vec::new(),
                max_members: None,
                read_signal: true,
            });
        }
        if !self.settings.rooms.is_empty() {
            routes.push(Route {
                kind: RouteKind::Rooms,
                rate_limit: Some(self.settings.rate_limit),
                groups: self.settings.rooms.keys().cloned().collect(),
                max_members: Some(self.settings.room_push_limit),
                read_signal: false,
            });
        }
        routes
    }

    #[tracing::instrument(level = "debug", name = "lineworks.send", skip_all,
        fields(roll_call = %msg.roll_call_id, delivery = msg.delivery_id))]
    async fn send(&self, msg: &OutboundMessage) -> Result<Sent, ProviderError> {
        self.send_talk(msg).await
    }

    #[tracing::instrument(level = "debug", name = "lineworks.broadcast", skip_all,
        fields(roll_call = %req.roll_call_id, kind = ?req.kind))]
    async fn broadcast(&self, req: &BroadcastRequest) -> Result<Broadcasted, ProviderError> {
        match req.kind {
            RouteKind::Broadcast => {
                let res = self.board_post(req).await;
                self.report(Component::BoardPost, &res);
                res
            }
            RouteKind::Rooms => self.room_message(req).await,
            RouteKind::Direct => Err(ProviderError::Permanent(
                "a 1:1 send is not a broadcast".into(),
            )),
        }
    }

    /// Polls the readers of every watched board post once; new reads become Read events.
    async fn poll_events(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<EventBatch, ProviderError> {
        self.poll_readers(cursor, wait).await
    }

    fn events_stored(&self) {
        self.reads_stored()
    }

    fn follow_broadcast(&self, roll_call: RollCallId, post_id: &str, posted_at: Millis) {
        self.watch(WatchedPost {
            rc: roll_call.0,
            post: post_id.to_string(),
            since: posted_at,
        });
    }
}

/// Classifies an answer that is not a success (a 401 is handled before this).
async fn refusal(resp: Response) -> ProviderError {
    let status = resp.status();
    match LINE_WORKS.temporary(status, resp.headers()) {
        Some(ProviderError::RateLimited { reset }) => {
            return ProviderError::RateLimited {
                reset: reset.max(Duration::from_millis(100)),
            }
        }
        Some(e) => return e,
        None => {}
    }
    let body = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    if status == StatusCode::NOT_FOUND || code.contains("NOT_FOUND") || code == "INVALID_USER" {
        return ProviderError::Permanent(format!("{UNKNOWN_USER} ({status} {code})"));
    }
    LINE_WORKS.refused(status, &body)
}
