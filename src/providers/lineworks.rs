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

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    BroadcastRequest, Broadcasted, Capabilities, ChatProvider, EventBatch, InboundEvent,
    InboundKind, OutboundMessage, ProviderError, RateLimit, Route, RouteKind, Sent,
};
use crate::clock::{Millis, SharedClock};
use crate::config::Secret;
use crate::health::{Component, Health};
use crate::ids::{ChatHandle, RollCallId};
use crate::ratelimit::TokenBucket;
use crate::scenario::{ButtonsShown, RouteTraits};

/// Talk and room messages: no read receipt, quick-reply buttons.
const TALK: RouteTraits = RouteTraits {
    reads_visible: false,
    buttons: ButtonsShown::WithMessage,
};
/// A must-read board post: readers are listed; it has no buttons, which follow in talk or
/// rooms ([`crate::dispatch`]).
const BOARD: RouteTraits = RouteTraits {
    reads_visible: true,
    buttons: ButtonsShown::Elsewhere,
};

/// Per-request budget.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A token is re-minted this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// The JWT assertion's lifetime (the platform allows at most 60 minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// The platform shows at most 13 quick-reply items.
pub const MAX_QUICK_REPLIES: usize = 13;
/// A text message holds at most this many characters (bot-send-text).
pub const MAX_TEXT_CHARS: usize = 2000;
/// Quick-reply labels longer than this are cut.
const MAX_LABEL_CHARS: usize = 20;
/// A must-read post stays must-read at most this many days (board-post-create:
/// `mustReadEndDate` 最大30日).
pub const MAX_MUST_READ_DAYS: i64 = 30;
/// How much of an unexpected error body goes into a reason.
const EXCERPT_CHARS: usize = 200;
/// Share of the platform's limit anpi plans with. A request leaves the token bucket and
/// reaches the platform a moment later, and that moment varies (the first ones wait for the
/// access token), so a bucket that spends exactly the limit can land one request too many in
/// the platform's window; 5% below absorbs that.
const LIMIT_SHARE: f64 = 0.95;
/// How a 404 (unknown user, room, board or post) begins its reason.
const UNKNOWN_USER: &str = "unknown user or room on LINE WORKS";
/// When a 429 carries no usable reset header.
const DEFAULT_RESET: Duration = Duration::from_secs(5);

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

/// JWT claims of the service-account assertion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    /// The app's client id.
    pub iss: String,
    /// The service account.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone)]
struct CachedToken {
    value: String,
    /// Clock millis after which it is re-minted.
    renew_at: Millis,
}

/// A must-read post whose readers are polled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WatchedPost {
    rc: i64,
    post: String,
    since: Millis,
}

/// The readers feed's cursor: the posts being watched, so a restart resumes them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReadersCursor {
    posts: Vec<WatchedPost>,
}

/// Reads already reported and stored, and those of the last poll, which count as reported
/// only once the watcher says it has stored them ([`ChatProvider::events_stored`]).
#[derive(Debug, Default)]
struct Reported {
    stored: HashSet<(String, String)>,
    pending: Vec<(String, String)>,
}

/// A client for the LINE WORKS API.
pub struct LineWorksProvider {
    client: reqwest::Client,
    settings: LineWorksSettings,
    key: jsonwebtoken::EncodingKey,
    clock: SharedClock,
    token: tokio::sync::Mutex<Option<CachedToken>>,
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

/// The postback data of an answer button: which roll call, which answer.
pub fn postback_data(rc: RollCallId, value: &str) -> String {
    format!("anpi:{}:{value}", rc.0)
}

/// Reads what [`postback_data`] wrote.
pub fn parse_postback(data: &str) -> Option<(RollCallId, String)> {
    let rest = data.strip_prefix("anpi:")?;
    let (rc, value) = rest.split_once(':')?;
    let rc = RollCallId::parse(rc).ok()?;
    (!value.is_empty()).then(|| (rc, value.to_string()))
}

/// The body of "Send messages (to a user)" and "(to a channel)": a text message
/// (<https://developers.worksmobile.com/en/docs/bot-send-text>: `content.type` "text",
/// `content.text` at most 2,000 characters) with a quick reply
/// (<https://developers.worksmobile.com/jp/docs/bot-quickreply>: at most 13 items, each
/// `{"action": ...}` with no `type` of its own) of postback actions
/// (<https://developers.worksmobile.com/jp/docs/bot-actionobject>: `label` at most 20
/// characters, `data` at most 300, `displayText` required in a quick reply, at most 300).
///
/// A quick reply rather than a button template: the Action Objects table allows postback
/// actions in quick replies but not in button templates (message, URI and copy only).
///
/// The reference is ambiguous about what a tap sends back: the Postback Event page
/// (bot-callback-postback) lists only carousels and rich menus as its sources, while the
/// Action Objects page says a postback action answers with a Postback Event wherever it is.
/// [`parse_callback`] takes both a `postback` event and a message event whose
/// `content.postback` holds the data.
fn message_body(rc: RollCallId, text: &str, buttons: &[super::AnswerButton]) -> Value {
    let items: Vec<Value> = buttons
        .iter()
        .take(MAX_QUICK_REPLIES)
        .map(|b| {
            let label: String = b.label.chars().take(MAX_LABEL_CHARS).collect();
            json!({"action": {"type": "postback", "label": label,
                              "data": postback_data(rc, &b.value), "displayText": b.label}})
        })
        .collect();
    let text: String = text.chars().take(MAX_TEXT_CHARS).collect();
    let mut content = json!({"type": "text", "text": text});
    if !items.is_empty() {
        content["quickReply"] = json!({ "items": items });
    }
    json!({ "content": content })
}

/// The body of "Create a post" (<https://developers.worksmobile.com/jp/reference/board-post-create>):
/// `title` (1..200), `body` (HTML, 1..716,800), `enableComment`, `mustReadEndDate` (a date at
/// most 30 days ahead; it is what makes the post must-read) and `sendNotifications`.
/// `isMustRead` and `mustReadPeriod` are fields of the answer, not of this request.
///
/// The end date is the day `req.until` falls on in Asia/Tokyo (the reference does not say
/// in which zone the date is read; a Japanese domain's is assumed), kept between today and
/// 30 days ahead.
pub fn board_post_body(req: &BroadcastRequest, now: DateTime<Utc>) -> Value {
    let tz = chrono_tz::Asia::Tokyo;
    let today = now.with_timezone(&tz).date_naive();
    let end = req
        .until
        .with_timezone(&tz)
        .date_naive()
        .clamp(today, today + chrono::Duration::days(MAX_MUST_READ_DAYS));
    json!({
        "title": req.title.chars().take(200).collect::<String>(),
        "body": html_escape(&req.asks.compose(&req.text, BOARD, &req.buttons)),
        "enableComment": false,
        "mustReadEndDate": end.format("%Y-%m-%d").to_string(),
        "sendNotifications": true,
    })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "<br>")
}

fn excerpt(body: &str) -> String {
    let mut s: String = body.chars().take(EXCERPT_CHARS).collect();
    if body.chars().nth(EXCERPT_CHARS).is_some() {
        s.push('…');
    }
    s
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    if e.is_builder() {
        return ProviderError::Permanent(format!("LINE WORKS request cannot be built: {e}"));
    }
    let reason = if e.is_timeout() {
        "LINE WORKS did not answer in time".to_string()
    } else if e.is_connect() {
        format!("cannot connect to LINE WORKS: {e}")
    } else {
        format!("LINE WORKS request failed: {e}")
    };
    ProviderError::Retryable {
        after: None,
        reason,
    }
}

/// Seconds from a header (`rateLimit-reset`, `Retry-After`).
fn header_secs(resp: &Response, name: &str) -> Option<Duration> {
    let raw = resp.headers().get(name)?.to_str().ok()?.trim();
    let secs: f64 = raw.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Classifies an answer that is not a success (a 401 is handled before this).
async fn refusal(resp: Response) -> ProviderError {
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let reset = header_secs(&resp, "ratelimit-reset")
            .or_else(|| header_secs(&resp, "retry-after"))
            .unwrap_or(DEFAULT_RESET);
        return ProviderError::RateLimited {
            reset: reset.max(Duration::from_millis(100)),
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return ProviderError::Retryable {
            after: header_secs(&resp, "retry-after"),
            reason: format!("LINE WORKS answered {status}"),
        };
    }
    let body = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    if status == StatusCode::NOT_FOUND || code.contains("NOT_FOUND") || code == "INVALID_USER" {
        return ProviderError::Permanent(format!("{UNKNOWN_USER} ({status} {code})"));
    }
    ProviderError::Permanent(format!("LINE WORKS answered {status}: {}", excerpt(&body)))
}

/// `expires_in` comes as a number or as a string of one.
fn expires_in(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[derive(Deserialize)]
struct ReadersPage {
    #[serde(default)]
    readers: Vec<Reader>,
    #[serde(rename = "responseMetaData", default)]
    meta: Option<ReadersMeta>,
}

#[derive(Deserialize)]
struct Reader {
    #[serde(rename = "userId")]
    user_id: Option<String>,
    #[serde(rename = "isRead")]
    is_read: bool,
}

#[derive(Deserialize)]
struct ReadersMeta {
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

impl LineWorksProvider {
    pub fn new(settings: LineWorksSettings, clock: SharedClock) -> Result<Self, LineWorksError> {
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(settings.private_key_pem.expose().as_bytes())
                .map_err(|e| LineWorksError::PrivateKey(e.to_string()))?;
        let max = settings.max_in_flight.max(1);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            // Fails only when the TLS backend cannot start: nothing anpi could run without.
            .expect("building the HTTP client");
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
            token: tokio::sync::Mutex::new(None),
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
            Err(e) => h.failing(c, e.to_string()),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.settings.api_base.trim_end_matches('/'))
    }

    /// The signed service-account assertion, on anpi's clock.
    pub fn assertion(&self) -> Result<String, ProviderError> {
        let now = self.clock.now().timestamp();
        let claims = AssertionClaims {
            iss: self.settings.client_id.clone(),
            sub: self.settings.service_account.clone(),
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs() as i64,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| ProviderError::Permanent(format!("cannot sign the JWT assertion: {e}")))
    }

    /// Exchanges a fresh assertion for an access token: "Service Account 認証 (JWT)"
    /// (<https://developers.worksmobile.com/jp/docs/auth-jwt>): `POST` the form
    /// (`application/x-www-form-urlencoded`) `assertion`, `grant_type`
    /// (`urn:ietf:params:oauth:grant-type:jwt-bearer`), `client_id`, `client_secret`, `scope`;
    /// the JWT is RS256 with `iss` (client id), `sub` (service account), `iat` and `exp` (at
    /// most 60 minutes on). The answer's `expires_in` may be a string; an access token lives
    /// 1 or 24 hours.
    async fn mint(&self) -> Result<CachedToken, ProviderError> {
        let assertion = self.assertion()?;
        let form = [
            ("assertion", assertion.as_str()),
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.expose()),
            ("scope", self.settings.scope.as_str()),
        ];
        let resp = self
            .client
            .post(&self.settings.token_url)
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(refusal(resp).await);
        }
        let body = resp.text().await.map_err(transport_error)?;
        if !status.is_success() {
            // Credentials are wrong: nothing will work until an admin fixes them.
            return Err(ProviderError::Permanent(format!(
                "LINE WORKS refused the service-account login ({status}): {}",
                excerpt(&body)
            )));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| ProviderError::Retryable {
            after: None,
            reason: format!("unreadable token answer: {e}"),
        })?;
        let value = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError::Retryable {
                after: None,
                reason: "token answer without access_token".into(),
            })?
            .to_string();
        let lifetime = v.get("expires_in").and_then(expires_in).unwrap_or(3600);
        let lifetime_ms =
            (lifetime as i64 * 1000 - TOKEN_MARGIN.as_millis() as i64).max(lifetime as i64 * 500);
        tracing::debug!(expires_in = lifetime, "LINE WORKS access token minted");
        Ok(CachedToken {
            value,
            renew_at: self.clock.now_millis() + lifetime_ms,
        })
    }

    /// The cached token, re-minted when it is near its expiry or when `stale` (a token the
    /// platform just refused) is still the cached one.
    async fn token(&self, stale: Option<&str>) -> Result<String, ProviderError> {
        let mut cached = self.token.lock().await;
        let now = self.clock.now_millis();
        if let Some(t) = cached.as_ref() {
            if now < t.renew_at && stale != Some(t.value.as_str()) {
                return Ok(t.value.clone());
            }
        }
        let minted = self.mint().await;
        self.report(Component::Token, &minted);
        let t = minted?;
        let v = t.value.clone();
        *cached = Some(t);
        Ok(v)
    }

    /// Sends an API request with the access token; on 401, refreshes once and retries once.
    async fn call(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, ProviderError> {
        let token = self.token(None).await?;
        let resp = build()
            .bearer_auth(&token)
            .send()
            .await
            .map_err(transport_error)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let token = self.token(Some(&token)).await?;
        let resp = build()
            .bearer_auth(&token)
            .send()
            .await
            .map_err(transport_error)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(ProviderError::Permanent(
                "LINE WORKS refused a freshly minted access token (check the app's scopes)".into(),
            ));
        }
        Ok(resp)
    }

    /// Posts a message and classifies the answer: 201 (no body) is success.
    async fn post_message(&self, url: String, body: Value) -> Result<(), ProviderError> {
        let res = async {
            let resp = self.call(|| self.client.post(&url).json(&body)).await?;
            if resp.status().is_success() {
                return Ok(());
            }
            Err(refusal(resp).await)
        }
        .await;
        self.report(Component::Sends, &res);
        res
    }

    fn watch(&self, post: WatchedPost) {
        let mut posts = self.posts.lock().unwrap_or_else(|e| e.into_inner());
        if !posts.iter().any(|p| p.post == post.post) {
            posts.push(post);
        }
    }

    /// Creates the must-read post ([`board_post_body`]) and follows its readers.
    async fn board_post(&self, req: &BroadcastRequest) -> Result<Broadcasted, ProviderError> {
        let board = self.settings.board_id.as_deref().ok_or_else(|| {
            ProviderError::Permanent("no board is configured for LINE WORKS".into())
        })?;
        self.board_posts.acquire().await;
        let body = board_post_body(req, self.clock.now());
        let url = self.api(&format!("/boards/{board}/posts"));
        let resp = self.call(|| self.client.post(&url).json(&body)).await?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        // Accepted: without a post id the reads cannot be followed, but the post is out.
        let post_id = resp
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| match v.get("postId") {
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            });
        match &post_id {
            Some(p) => self.watch(WatchedPost {
                rc: req.roll_call_id.0,
                post: p.clone(),
                since: self.clock.now_millis(),
            }),
            None => {
                tracing::warn!(roll_call = %req.roll_call_id, "board post accepted without a post id: reads cannot be followed")
            }
        }
        Ok(Broadcasted { post_id })
    }

    /// Every member marked read on `post`, page by page, each page within the readers budget:
    /// "Get readers of a post" (<https://developers.worksmobile.com/en/docs/board-post-reader-list>),
    /// `GET /boards/{boardId}/posts/{postId}/readers`. The page documents no query parameter;
    /// its answer holds up to 5,000 members, read and unread (`isRead`), and
    /// `responseMetaData.nextCursor`, which is sent back as `cursor` as every other Board list
    /// operation takes it. No `count`: this operation does not document one.
    async fn readers(&self, post: &str) -> Result<Vec<String>, ProviderError> {
        let board = self.settings.board_id.as_deref().unwrap_or_default();
        let url = self.api(&format!("/boards/{board}/posts/{post}/readers"));
        let mut read = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            self.board_readers.acquire().await;
            let resp = self
                .call(|| {
                    let req = self.client.get(&url);
                    match &cursor {
                        Some(c) => req.query(&[("cursor", c)]),
                        None => req,
                    }
                })
                .await?;
            if !resp.status().is_success() {
                let e = refusal(resp).await;
                if let ProviderError::RateLimited { reset } = &e {
                    self.board_readers.pause_for(*reset);
                }
                return Err(e);
            }
            let page: ReadersPage = resp.json().await.map_err(|e| ProviderError::Retryable {
                after: None,
                reason: format!("unreadable readers page: {e}"),
            })?;
            read.extend(
                page.readers
                    .into_iter()
                    .filter(|r| r.is_read)
                    .filter_map(|r| r.user_id),
            );
            match page
                .meta
                .and_then(|m| m.next_cursor)
                .filter(|c| !c.is_empty())
            {
                Some(c) => cursor = Some(c),
                None => return Ok(read),
            }
        }
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
        let url = self.api(&format!(
            "/bots/{}/users/{}/messages",
            self.settings.bot_id,
            msg.to.as_str()
        ));
        let text = msg.asks.compose(&msg.text, TALK, &msg.buttons);
        self.post_message(url, message_body(msg.roll_call_id, &text, &msg.buttons))
            .await?;
        // 201 with no body: the platform gives no message id.
        Ok(Sent { message_id: None })
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
            RouteKind::Rooms => {
                let group = req.group.as_deref().unwrap_or_default();
                let channel = self.settings.rooms.get(group).ok_or_else(|| {
                    ProviderError::Permanent(format!("no LINE WORKS room for {group:?}"))
                })?;
                let url = self.api(&format!(
                    "/bots/{}/channels/{channel}/messages",
                    self.settings.bot_id
                ));
                let text = req.asks.compose(&req.text, TALK, &req.buttons);
                self.post_message(url, message_body(req.roll_call_id, &text, &req.buttons))
                    .await?;
                Ok(Broadcasted::default())
            }
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
        // Reads of a poll whose batch was not stored are reported again.
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .clear();
        if let Some(saved) = cursor.and_then(|c| serde_json::from_str::<ReadersCursor>(c).ok()) {
            for p in saved.posts {
                self.watch(p);
            }
        }
        let now = self.clock.now_millis();
        let keep_ms = self.settings.readers_poll_for.as_millis() as i64;
        let posts: Vec<WatchedPost> = {
            let mut posts = self.posts.lock().unwrap_or_else(|e| e.into_inner());
            posts.retain(|p| now - p.since < keep_ms);
            posts.clone()
        };
        if posts.is_empty() {
            self.clock.sleep(wait).await;
            let next = serde_json::to_string(&ReadersCursor::default()).ok();
            return Ok(EventBatch {
                events: Vec::new(),
                cursor: cursor.and(next),
            });
        }
        let mut events = Vec::new();
        let mut new_reads = Vec::new();
        for p in &posts {
            let readers = self.readers(&p.post).await;
            self.report(Component::Readers, &readers);
            let readers = readers?;
            let seen_at = self.clock.now();
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for user in readers {
                let key = (p.post.clone(), user);
                if seen.stored.contains(&key) {
                    continue;
                }
                let Ok(from) = ChatHandle::parse(&key.1) else {
                    continue;
                };
                events.push(InboundEvent {
                    event_id: format!("lw-read:{}:{}", p.post, key.1),
                    roll_call_id: Some(RollCallId(p.rc)),
                    from,
                    kind: InboundKind::Read,
                    // The platform says who has read, not when: this is when anpi saw it.
                    occurred_at: seen_at,
                });
                new_reads.push(key);
            }
        }
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).pending = new_reads;
        let next = serde_json::to_string(&ReadersCursor { posts }).ok();
        Ok(EventBatch {
            events,
            cursor: next,
        })
    }

    fn events_stored(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let pending = std::mem::take(&mut seen.pending);
        seen.stored.extend(pending);
    }

    fn follow_broadcast(&self, roll_call: RollCallId, post_id: &str, posted_at: Millis) {
        self.watch(WatchedPost {
            rc: roll_call.0,
            post: post_id.to_string(),
            since: posted_at,
        });
    }
}

/// Why a callback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("missing or wrong X-WORKS-BotId")]
    WrongBot,
    #[error("missing or invalid X-WORKS-Signature")]
    BadSignature,
    #[error("malformed callback body: {0}")]
    Malformed(String),
}

impl CallbackError {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::WrongBot => "wrong_bot",
            Self::BadSignature => "bad_signature",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// base64(HMAC-SHA256(bot secret, body)): what the platform puts in `X-WORKS-Signature`.
pub fn sign(bot_secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(bot_secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks the bot id and the signature (constant time) of a callback.
pub fn verify(
    bot_id: &str,
    bot_secret: &str,
    header_bot: Option<&str>,
    header_sig: Option<&str>,
    body: &[u8],
) -> Result<(), CallbackError> {
    use subtle::ConstantTimeEq;
    let got_bot = header_bot.ok_or(CallbackError::WrongBot)?;
    if !bool::from(got_bot.trim().as_bytes().ct_eq(bot_id.as_bytes())) {
        return Err(CallbackError::WrongBot);
    }
    let sig = header_sig.ok_or(CallbackError::BadSignature)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| CallbackError::BadSignature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(bot_secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sig)
        .map_err(|_| CallbackError::BadSignature)
}

#[derive(Deserialize)]
struct CallbackBody {
    #[serde(rename = "type")]
    kind: String,
    source: CallbackSource,
    #[serde(rename = "issuedTime")]
    issued_time: Option<DateTime<Utc>>,
    content: Option<Value>,
    data: Option<String>,
}

#[derive(Deserialize)]
struct CallbackSource {
    #[serde(rename = "userId")]
    user_id: Option<String>,
}

/// The largest callback body accepted. The biggest event the bot callback documents is a
/// text message of at most 2,000 characters (bot-callback-message, bot-send-text); JSON-escaped
/// as `\uXXXX` pairs that is under 24 KB with its envelope, so 64 KiB is generous and a
/// megabyte-sized body is refused (413) before it is read whole.
pub const CALLBACK_BODY_LIMIT: usize = 64 * 1024;

/// What a verified callback body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Something from a person anpi records.
    Event(InboundEvent),
    /// An event anpi does not use (join, leave, a postback of another bot): logged, not stored.
    Ignored {
        /// The callback's `type`.
        kind: String,
        /// Who sent it, when the body says.
        from: Option<String>,
        /// Why it is not used.
        why: String,
    },
}

impl Parsed {
    /// The event, if it is one.
    pub fn into_event(self) -> Option<InboundEvent> {
        match self {
            Self::Event(e) => Some(e),
            Self::Ignored { .. } => None,
        }
    }
}

/// Turns a verified callback body into an event, or says why it is not one (event types anpi
/// does not use, a postback without anpi's prefix). The event id is a hash of the body, so
/// the same callback delivered twice is one event. `occurred_at` is the platform's
/// `issuedTime` (when the platform says the person acted); the store records its own receipt
/// time beside it.
pub fn parse_callback(body: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, CallbackError> {
    let cb: CallbackBody =
        serde_json::from_slice(body).map_err(|e| CallbackError::Malformed(e.to_string()))?;
    let event_id = format!("lw-cb:{:x}", Sha256::digest(body));
    let occurred_at = cb.issued_time.unwrap_or(received_at);
    let answer = |data: &str| {
        parse_postback(data).map(|(rc, value)| (Some(rc), InboundKind::Answer { value }))
    };
    let ignored = |why: String| Parsed::Ignored {
        kind: cb.kind.clone(),
        from: cb.source.user_id.clone(),
        why,
    };
    let parsed = match cb.kind.as_str() {
        "postback" => {
            let data = cb
                .data
                .as_deref()
                .ok_or_else(|| CallbackError::Malformed("postback without data".into()))?;
            match answer(data) {
                Some(a) => Some(a),
                None => {
                    return Ok(ignored(format!(
                        "postback data without anpi's prefix: {:?}",
                        excerpt(data)
                    )))
                }
            }
        }
        "message" => {
            let content = cb
                .content
                .as_ref()
                .ok_or_else(|| CallbackError::Malformed("message without content".into()))?;
            // A tap on one of anpi's buttons is that answer; anything else the person sends
            // (text, a sticker, a photo, another bot's button) is a reply all the same.
            let postback = content.get("postback").and_then(Value::as_str);
            let tap = postback.and_then(answer);
            if let (Some(data), None) = (postback, &tap) {
                tracing::info!(
                    user = cb.source.user_id.as_deref().unwrap_or("?"),
                    data = %excerpt(data),
                    "LINE WORKS message with a postback without anpi's prefix: kept as a reply"
                );
            }
            if tap.is_some() {
                tap
            } else {
                match content.get("type").and_then(Value::as_str) {
                    Some("text") => content.get("text").and_then(Value::as_str).map(|t| {
                        (
                            None,
                            InboundKind::Reply {
                                text: t.to_string(),
                            },
                        )
                    }),
                    Some("sticker") => {
                        let id = format!(
                            "{}/{}",
                            content
                                .get("packageId")
                                .map(|v| v.to_string().trim_matches('"').to_string())
                                .unwrap_or_default(),
                            content
                                .get("stickerId")
                                .map(|v| v.to_string().trim_matches('"').to_string())
                                .unwrap_or_default()
                        );
                        Some((None, InboundKind::Sticker { id }))
                    }
                    Some(other) => Some((
                        None,
                        InboundKind::Reply {
                            text: format!("[{other}]"),
                        },
                    )),
                    None => None,
                }
            }
        }
        _ => None,
    };
    let Some((roll_call_id, kind)) = parsed else {
        return Ok(ignored("an event type anpi does not record".into()));
    };
    let user = cb
        .source
        .user_id
        .clone()
        .ok_or_else(|| CallbackError::Malformed("no source.userId".into()))?;
    let from = ChatHandle::parse(&user).map_err(|e| CallbackError::Malformed(e.to_string()))?;
    Ok(Parsed::Event(InboundEvent {
        event_id,
        roll_call_id,
        from,
        kind,
        occurred_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::providers::AnswerButton;
    use crate::simulator::lineworks::{
        self as lws, LwSimConfig, LwSimHandle, TEST_PRIVATE_KEY_PEM,
    };
    use crate::simulator::Script;
    use chrono::TimeZone;
    use std::sync::Arc;

    fn clock() -> ManualClock {
        ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 11, 5, 46, 0).unwrap())
    }

    fn handle(s: &str) -> ChatHandle {
        ChatHandle::parse(s).unwrap()
    }

    async fn stand(config: LwSimConfig, c: &ManualClock) -> LwSimHandle {
        lws::start(config, Script::new(), Arc::new(c.clone()))
            .await
            .unwrap()
    }

    fn provider(lw: &LwSimHandle, c: &ManualClock) -> LineWorksProvider {
        let cfg = lw.config();
        LineWorksProvider::new(
            LineWorksSettings {
                api_base: lw.api_base(),
                token_url: lw.token_url(),
                client_id: cfg.client_id.clone(),
                client_secret: Secret::new(cfg.client_secret.clone()),
                service_account: cfg.service_account.clone(),
                private_key_pem: Secret::new(TEST_PRIVATE_KEY_PEM),
                scope: "bot bot.message board".into(),
                bot_id: cfg.bot_id.clone(),
                board_id: Some(cfg.board_id.clone()),
                rooms: BTreeMap::new(),
                rate_limit: cfg.rate_limit,
                board_rate_limit: cfg.board_rate_limit,
                room_push_limit: 500,
                max_in_flight: 4,
                readers_poll_for: Duration::from_secs(3600),
            },
            Arc::new(c.clone()),
        )
        .unwrap()
    }

    fn message(to: &str) -> OutboundMessage {
        OutboundMessage {
            asks: Default::default(),
            delivery_id: 1,
            roll_call_id: RollCallId(7),
            to: handle(to),
            text: "【訓練】安否確認です。".into(),
            buttons: vec![AnswerButton {
                label: "無事".into(),
                value: "safe".into(),
            }],
            resend: false,
        }
    }

    #[tokio::test]
    async fn the_stand_in_checks_the_jwt_claims_and_signature() {
        let c = clock();
        let lw = stand(LwSimConfig::new(vec![handle("u1")]), &c).await;
        let p = provider(&lw, &c);
        assert_eq!(p.send(&message("u1")).await, Ok(Sent { message_id: None }));
        let a = lw.assertions();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].claims.iss, "test-client-id");
        assert_eq!(a[0].claims.sub, "test.serviceaccount@anpi-test");
        assert_eq!(a[0].claims.iat, c.now().timestamp());
        assert_eq!(a[0].claims.exp - a[0].claims.iat, 3600);
        // The postback data carries the roll call and the answer.
        assert_eq!(
            lw.inbox(&handle("u1")),
            vec![vec!["anpi:7:safe".to_string()]]
        );

        // A stand-in that knows another key refuses the same provider's JWT for good.
        let mut other = LwSimConfig::new(vec![handle("u1")]);
        other.public_key_pem =
            include_str!("../../tests/fixtures/lineworks-other-public-key.TEST-ONLY.pem").into();
        let lw2 = stand(other, &c).await;
        let p2 = provider(&lw2, &c);
        match p2.send(&message("u1")).await {
            Err(ProviderError::Permanent(r)) => assert!(r.contains("service-account"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(lw2.stats().token_refused, 1);
        assert_eq!(lw2.stats().user_messages, 0);
    }

    #[tokio::test]
    async fn the_token_is_cached_and_reminted_before_it_expires() {
        let c = clock();
        let mut cfg = LwSimConfig::new(vec![handle("u1")]);
        cfg.token_lifetime = Duration::from_secs(600);
        let lw = stand(cfg, &c).await;
        let p = provider(&lw, &c);
        p.send(&message("u1")).await.unwrap();
        p.send(&message("u1")).await.unwrap();
        assert_eq!(lw.stats().tokens_issued, 1, "cached");
        // 600 s lifetime: re-minted 300 s before the end.
        c.advance(Duration::from_secs(310));
        p.send(&message("u1")).await.unwrap();
        assert_eq!(lw.stats().tokens_issued, 2);
        assert_eq!(lw.stats().unauthorized, 0, "never used an expired token");
    }

    #[tokio::test]
    async fn a_401_leads_to_exactly_one_refresh_and_one_retry() {
        let c = clock();
        let lw = stand(LwSimConfig::new(vec![handle("u1")]), &c).await;
        let p = provider(&lw, &c);
        p.send(&message("u1")).await.unwrap();
        lw.revoke_tokens();
        p.send(&message("u1")).await.unwrap();
        let st = lw.stats();
        assert_eq!(
            (st.unauthorized, st.tokens_issued, st.user_messages),
            (1, 2, 2)
        );
    }

    #[tokio::test]
    async fn a_429_is_rate_limited_for_the_reset_the_platform_gave() {
        let c = clock();
        let lw = stand(LwSimConfig::new(vec![handle("u1")]), &c).await;
        let p = provider(&lw, &c);
        lw.force_429(1, Duration::from_secs(7));
        assert_eq!(
            p.send(&message("u1")).await,
            Err(ProviderError::RateLimited {
                reset: Duration::from_secs(7)
            })
        );
        assert_eq!(lw.stats().limit_exceeded, 0);
    }

    #[tokio::test]
    async fn unknown_user_is_permanent_and_more_than_13_buttons_are_cut() {
        let c = clock();
        let mut script = Script::new();
        script.insert(handle("gone"), crate::simulator::Behaviour::unknown_user());
        let lw = lws::start(
            LwSimConfig::new(vec![handle("u1")]),
            script,
            Arc::new(c.clone()),
        )
        .await
        .unwrap();
        let p = provider(&lw, &c);
        assert!(matches!(
            p.send(&message("gone")).await,
            Err(ProviderError::Permanent(r)) if r.contains("unknown user")
        ));
        let mut m = message("u1");
        m.buttons = (0..20)
            .map(|i| AnswerButton {
                label: format!("とても長いラベルの選択肢その{i}番目です"),
                value: format!("v{i}"),
            })
            .collect();
        // The stand-in refuses more than 13 items with 400: this passing means they were cut.
        p.send(&m).await.unwrap();
        assert_eq!(lw.inbox(&handle("u1"))[0].len(), MAX_QUICK_REPLIES);
    }

    #[tokio::test]
    async fn readers_are_paged_and_each_read_is_reported_once() {
        let c = clock();
        let members: Vec<ChatHandle> = (0..12_000).map(|i| handle(&format!("u{i}"))).collect();
        let mut script = Script::new();
        for m in members.iter().step_by(2) {
            script.insert(
                m.clone(),
                crate::simulator::Behaviour::reads_after(Duration::from_secs(10)),
            );
        }
        let lw = lws::start(LwSimConfig::new(members), script, Arc::new(c.clone()))
            .await
            .unwrap();
        let p = provider(&lw, &c);
        let posted = p
            .broadcast(&BroadcastRequest {
                roll_call_id: RollCallId(3),
                kind: RouteKind::Broadcast,
                group: None,
                title: "安否確認".into(),
                text: "無事なら既読に".into(),
                buttons: vec![],
                asks: Default::default(),
                until: c.now() + chrono::Duration::days(1),
            })
            .await
            .unwrap();
        assert!(posted.post_id.is_some());
        let none = p.poll_events(None, Duration::ZERO).await.unwrap();
        assert!(none.events.is_empty(), "nobody has read yet");
        c.advance(Duration::from_secs(11));
        let batch = p
            .poll_events(none.cursor.as_deref(), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(batch.events.len(), 6_000);
        assert!(batch
            .events
            .iter()
            .all(|e| e.kind == InboundKind::Read && e.roll_call_id == Some(RollCallId(3))));
        // 12,000 members at 5,000 a page: 3 pages a poll, 2 polls.
        assert_eq!(lw.stats().readers_requests, 6);
        // The watcher could not store that batch (it never said `events_stored`), so it polls
        // again: the same reads come again rather than being lost.
        c.advance(Duration::from_secs(10));
        let retried = p
            .poll_events(none.cursor.as_deref(), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            retried.events.len(),
            6_000,
            "reads not yet stored are reported again"
        );
        // Stored this time: polling on from its cursor reports nothing new.
        p.events_stored();
        c.advance(Duration::from_secs(10));
        let again = p
            .poll_events(retried.cursor.as_deref(), Duration::ZERO)
            .await
            .unwrap();
        assert!(again.events.is_empty(), "reads are reported once");
        // A new process (no memory of what was reported) following the stored post, as after
        // a restart or on another replica, reports them again; the event log drops replays.
        let fresh = provider(&lw, &c);
        fresh.follow_broadcast(
            RollCallId(3),
            posted.post_id.as_deref().unwrap(),
            c.now_millis(),
        );
        c.advance(Duration::from_secs(10));
        let rebuilt = fresh.poll_events(None, Duration::ZERO).await.unwrap();
        assert_eq!(rebuilt.events.len(), 6_000);
        assert_eq!(lw.stats().limit_exceeded, 0);
    }

    #[tokio::test]
    async fn every_request_the_adapter_makes_passes_the_documented_schema() {
        let c = clock();
        let mut cfg = LwSimConfig::new(vec![handle("u1"), handle("u2")]);
        cfg.rooms.insert("ch-1".into(), vec![handle("u2")]);
        let lw = stand(cfg, &c).await;
        let mut settings = provider(&lw, &c).settings.clone();
        settings.rooms.insert("総務課".into(), "ch-1".into());
        let p = LineWorksProvider::new(settings, Arc::new(c.clone())).unwrap();
        let mut m = message("u1");
        m.buttons = (0..13)
            .map(|i| AnswerButton {
                label: format!("選択肢{i}"),
                value: format!("v{i}"),
            })
            .collect();
        m.text = "安".repeat(2500);
        p.send(&m).await.unwrap();
        let req = BroadcastRequest {
            roll_call_id: RollCallId(4),
            kind: RouteKind::Rooms,
            group: Some("総務課".into()),
            title: "安否確認".into(),
            text: "<地震> & 津波".into(),
            buttons: m.buttons.clone(),
            asks: Default::default(),
            // Further than the platform allows: kept to 30 days.
            until: c.now() + chrono::Duration::days(45),
        };
        p.broadcast(&req).await.unwrap();
        let posted = p
            .broadcast(&BroadcastRequest {
                kind: RouteKind::Broadcast,
                group: None,
                ..req
            })
            .await
            .unwrap();
        assert!(posted.post_id.is_some());
        p.poll_events(None, Duration::ZERO).await.unwrap();
        assert_eq!(
            lw.refusals(),
            vec![],
            "a request broke the documented shape"
        );
        let post = &lw.posts()[0];
        let today = c.now().with_timezone(&chrono_tz::Asia::Tokyo).date_naive();
        assert_eq!(post.must_read_end, Some(today + chrono::Duration::days(30)));
        // The post counts reads but has no buttons: it says so, and HTML-escaped.
        assert!(
            post.body.starts_with("&lt;地震&gt; &amp; 津波<br><br>"),
            "{}",
            post.body
        );
        assert!(post.body.contains("読むだけで構いません") && !post.body.contains("下のボタン"));
        // Talk shows no reads: the 1:1 text never says reading is enough.
        let talk = &lw.received(&handle("u2"))[0].text;
        assert!(
            talk.contains("返信") && !talk.contains("読むだけ"),
            "{talk}"
        );
        assert!(post.send_notifications && !post.enable_comment);
        assert_eq!(lw.received(&handle("u1"))[0].text.chars().count(), 2000);
        assert_eq!(lw.inbox(&handle("u2"))[0].len(), 13);
        let st = lw.stats();
        assert_eq!(
            (
                st.user_messages,
                st.channel_messages,
                st.board_posts,
                st.readers_requests
            ),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn callbacks_verify_and_parse() {
        let body = r#"{"type":"message","source":{"userId":"u1"},"issuedTime":"2026-03-11T05:47:00.000Z","content":{"type":"text","text":"無事です"}}"#.as_bytes();
        let sig = sign("s3cret", body);
        assert_eq!(verify("b1", "s3cret", Some("b1"), Some(&sig), body), Ok(()));
        assert_eq!(
            verify("b1", "s3cret", Some("b2"), Some(&sig), body),
            Err(CallbackError::WrongBot)
        );
        assert_eq!(
            verify("b1", "other", Some("b1"), Some(&sig), body),
            Err(CallbackError::BadSignature)
        );
        assert_eq!(
            verify("b1", "s3cret", Some("b1"), None, body),
            Err(CallbackError::BadSignature)
        );
        let e = parse_callback(body, Utc::now())
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            e.kind,
            InboundKind::Reply {
                text: "無事です".into()
            }
        );
        assert_eq!(e.roll_call_id, None);
        assert!(e.event_id.starts_with("lw-cb:"));
        assert_eq!(
            parse_callback(body, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .event_id,
            e.event_id
        );

        let tap = r#"{"type":"message","source":{"userId":"u1"},"content":{"type":"text","text":"無事","postback":"anpi:9:safe"}}"#.as_bytes();
        let e = parse_callback(tap, Utc::now())
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            e.kind,
            InboundKind::Answer {
                value: "safe".into()
            }
        );
        assert_eq!(e.roll_call_id, Some(RollCallId(9)));

        let sticker = br#"{"type":"message","source":{"userId":"u1"},"content":{"type":"sticker","packageId":"1","stickerId":"2"}}"#;
        assert!(matches!(
            parse_callback(sticker, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .kind,
            InboundKind::Sticker { .. }
        ));
        // Another bot's button, or a photo: a reply all the same.
        let foreign = r#"{"type":"message","source":{"userId":"u1"},"content":{"type":"text","text":"はい","postback":"other-bot:1"}}"#.as_bytes();
        assert_eq!(
            parse_callback(foreign, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .kind,
            InboundKind::Reply {
                text: "はい".into()
            }
        );
        let photo = br#"{"type":"message","source":{"userId":"u1"},"content":{"type":"image","resourceId":"r1"}}"#;
        assert_eq!(
            parse_callback(photo, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .kind,
            InboundKind::Reply {
                text: "[image]".into()
            }
        );
        let leave = br#"{"type":"leave","source":{"userId":"u1"}}"#;
        assert!(matches!(
            parse_callback(leave, Utc::now()),
            Ok(Parsed::Ignored { kind, .. }) if kind == "leave"
        ));
        // Another bot's postback: not anpi's, said why.
        let other = br#"{"type":"postback","source":{"userId":"u1"},"data":"action=buy"}"#;
        match parse_callback(other, Utc::now()).unwrap() {
            Parsed::Ignored { why, from, .. } => {
                assert!(why.contains("prefix"), "{why}");
                assert_eq!(from.as_deref(), Some("u1"));
            }
            e => panic!("{e:?}"),
        }
        // The platform's time travels as the event's time.
        let at = parse_callback(body, Utc::now())
            .unwrap()
            .into_event()
            .unwrap()
            .occurred_at;
        assert_eq!(at.to_rfc3339(), "2026-03-11T05:47:00+00:00");
        assert!(matches!(
            parse_callback(b"[]", Utc::now()),
            Err(CallbackError::Malformed(_))
        ));
        assert!(matches!(
            parse_callback(
                br#"{"type":"postback","source":{"userId":"u1"}}"#,
                Utc::now()
            ),
            Err(CallbackError::Malformed(_))
        ));
    }

    #[test]
    fn expires_in_may_be_a_string_and_debug_hides_secrets() {
        assert_eq!(expires_in(&json!("86400")), Some(86_400));
        assert_eq!(expires_in(&json!(3600)), Some(3600));
        assert_eq!(expires_in(&json!(null)), None);
        let c = clock();
        let s = LineWorksSettings {
            api_base: "http://x".into(),
            token_url: "http://x/t".into(),
            client_id: "id".into(),
            client_secret: Secret::new("client-s3cret"),
            service_account: "sa".into(),
            private_key_pem: Secret::new(TEST_PRIVATE_KEY_PEM),
            scope: "bot".into(),
            bot_id: "b".into(),
            board_id: None,
            rooms: BTreeMap::new(),
            rate_limit: RateLimit {
                requests: 240,
                per: Duration::from_secs(60),
            },
            board_rate_limit: RateLimit {
                requests: 60,
                per: Duration::from_secs(60),
            },
            room_push_limit: 500,
            max_in_flight: 4,
            readers_poll_for: Duration::from_secs(60),
        };
        let p = LineWorksProvider::new(s, Arc::new(c)).unwrap();
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("client-s3cret") && !dbg.contains("PRIVATE KEY"),
            "{dbg}"
        );
        assert!(p.routes().is_empty(), "no board, no rooms: 1:1 only");
        assert!(!p.capabilities().read_receipts, "talk has no read receipts");
    }
}
