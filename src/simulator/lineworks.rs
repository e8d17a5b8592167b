//! A LINE WORKS-compatible stand-in server, its own axum app on loopback, that enforces the
//! documented API 2.0 rules the adapter must live with: a token endpoint that checks the form
//! and the service-account JWT (RS256) against a test public key, 401 for unknown or expired
//! tokens, every request body and query checked field by field against the reference
//! ([`super::lineworks_schema`]) and answered 400 `{"code":"INVALID_PARAMETER",...}` when it
//! breaks a rule, 404 for an unknown bot, user, channel, board or post, 201-with-no-body sends,
//! a sliding-window rate limit per API operation answered with 429
//! `{"code":"TOO_MANY_REQUESTS"}` and `rateLimit-*` headers, must-read board posts whose
//! readers list pages by cursor, no read receipt for talk, and signed callbacks POSTed to
//! anpi when a scripted person taps a button, replies or sends a sticker.
//!
//! Invariants: limits are counted on the shared clock, exactly (a request that arrives when
//! its operation's window is full is counted in [`LwStats::limit_exceeded`]: the client broke
//! the limit); a forced 429 or outage is never counted as the client's fault; every refused
//! request is kept in [`LwSimHandle::refusals`] with the reason, so a test can show none was
//! refused; a person's board read appears only once the clock reaches it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use chrono::NaiveDate;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::lineworks_schema as schema;
use super::{Script, SimAnswer};
use crate::clock::{Millis, SharedClock};
use crate::ids::ChatHandle;
use crate::providers::lineworks::{sign, AssertionClaims};
use crate::providers::RateLimit;

/// TEST-ONLY key pair (tests/fixtures/README.md): never registered anywhere, protects nothing.
pub const TEST_PRIVATE_KEY_PEM: &str =
    include_str!("../../tests/fixtures/lineworks-test-private-key.TEST-ONLY.pem");
pub const TEST_PUBLIC_KEY_PEM: &str =
    include_str!("../../tests/fixtures/lineworks-test-public-key.TEST-ONLY.pem");

/// Readers per page (board-post-reader-list: `readers` maxItems 5000).
pub const READERS_PER_PAGE: usize = 5000;

/// The stand-in's view of one domain, one app, one bot and one board.
#[derive(Clone)]
pub struct LwSimConfig {
    pub client_id: String,
    pub client_secret: String,
    pub service_account: String,
    /// PEM of the key the JWT must be signed with.
    pub public_key_pem: String,
    pub bot_id: String,
    pub bot_secret: String,
    pub board_id: String,
    /// Channel id -> members.
    pub rooms: BTreeMap<String, Vec<ChatHandle>>,
    /// Per API operation (user messages, channel messages).
    pub rate_limit: RateLimit,
    /// Board post creation and readers, each.
    pub board_rate_limit: RateLimit,
    /// What `expires_in` says (sent as a string, as the platform may).
    pub token_lifetime: Duration,
    /// anpi's `POST /callbacks/lineworks`; without one, nobody taps.
    pub callback_url: Option<String>,
    /// Everyone in the domain: the board's members, in readers order.
    pub members: Vec<ChatHandle>,
    /// The domain's time zone, for `mustReadEndDate`.
    pub zone: chrono_tz::Tz,
}

impl fmt::Debug for LwSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LwSimConfig")
            .field("client_id", &self.client_id)
            .field("bot_id", &self.bot_id)
            .field("board_id", &self.board_id)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl LwSimConfig {
    /// A domain of `members` with the test key, 240/min per operation and 60/min for boards.
    pub fn new(members: Vec<ChatHandle>) -> Self {
        Self {
            client_id: "test-client-id".into(),
            client_secret: "test-client-secret".into(),
            service_account: "test.serviceaccount@anpi-test".into(),
            public_key_pem: TEST_PUBLIC_KEY_PEM.into(),
            bot_id: "2000001".into(),
            bot_secret: "test-bot-secret".into(),
            board_id: "100".into(),
            rooms: BTreeMap::new(),
            rate_limit: RateLimit {
                requests: 240,
                per: Duration::from_secs(60),
            },
            board_rate_limit: RateLimit {
                requests: 60,
                per: Duration::from_secs(60),
            },
            token_lifetime: Duration::from_secs(86_400),
            callback_url: None,
            members,
            zone: chrono_tz::Asia::Tokyo,
        }
    }
}

/// Counters a test checks the adapter against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LwStats {
    pub tokens_issued: u64,
    /// Token requests refused (bad form, bad JWT, wrong client).
    pub token_refused: u64,
    /// API requests refused with 401.
    pub unauthorized: u64,
    /// Requests refused with 400: a shape the reference does not allow.
    pub bad_requests: u64,
    /// Requests refused with 404 (unknown bot, user, channel, board or post).
    pub not_found: u64,
    pub user_messages: u64,
    pub channel_messages: u64,
    pub board_posts: u64,
    pub readers_requests: u64,
    /// Requests that arrived with their operation's window full: the client's fault.
    pub limit_exceeded: u64,
    pub forced_429: u64,
    /// Requests answered 503 while the platform was made to be down.
    pub outage_refused: u64,
    /// The most requests of one operation seen in any window.
    pub max_in_window: u32,
    /// The most requests seen in any window, per operation.
    pub max_in_window_by_op: BTreeMap<&'static str, u32>,
    pub callbacks_sent: u64,
    /// Callbacks anpi did not answer 200.
    pub callbacks_refused: u64,
    pub unknown_user: u64,
}

/// One JWT the token endpoint accepted, for tests to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedAssertion {
    pub claims: AssertionClaims,
}

/// A request the stand-in refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The operation, e.g. `board_posts`.
    pub op: &'static str,
    pub description: String,
}

/// A board post as the stand-in keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostInfo {
    pub post_id: u64,
    pub title: String,
    /// HTML, as sent.
    pub body: String,
    /// `mustReadEndDate`: a post is must-read only with one.
    pub must_read_end: Option<NaiveDate>,
    pub enable_comment: bool,
    pub send_notifications: bool,
    pub created_at: Millis,
}

/// One message a person received, in talk or in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub at: Millis,
    /// The room it came through, if not 1:1.
    pub channel: Option<String>,
    pub text: String,
    /// Postback data of its quick replies.
    pub postbacks: Vec<String>,
}

struct Post {
    info: PostInfo,
    /// Member -> when they read it.
    reads: HashMap<ChatHandle, Millis>,
}

struct Callback {
    at: Millis,
    body: Vec<u8>,
}

struct LwState {
    script: Script,
    tokens: HashMap<String, Millis>,
    assertions: Vec<AcceptedAssertion>,
    windows: HashMap<&'static str, VecDeque<Millis>>,
    forced: u32,
    forced_reset: Duration,
    /// Until this clock time every API request gets 503 (the platform is down).
    down_until: Millis,
    /// Operations that answer 503 until mended.
    broken: HashSet<&'static str>,
    posts: BTreeMap<u64, Post>,
    next_post: u64,
    /// Set by [`LwSimHandle::repeat_readers_cursor`]: the readers pages ignore `cursor`.
    repeat_cursor: bool,
    /// Clock times of forced 429s and of accepted 1:1 messages, for pacing checks.
    forced_log: Vec<Millis>,
    accepted_log: Vec<Millis>,
    /// Accepted requests per operation, in clock time.
    request_times: BTreeMap<&'static str, Vec<Millis>>,
    received: HashMap<ChatHandle, Vec<Received>>,
    /// People who answer in talk after a board post: a 1:1 message that follows does not
    /// make them answer a second time.
    talked_after_post: HashSet<ChatHandle>,
    refusals: Vec<Refusal>,
    callbacks: Vec<Callback>,
    stats: LwStats,
    next_token: u64,
    /// anpi's callback endpoint.
    script_url: Option<String>,
}

struct Shared {
    config: LwSimConfig,
    clock: SharedClock,
    decoding: jsonwebtoken::DecodingKey,
    state: Mutex<LwState>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LwState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running stand-in. Clones share one server.
#[derive(Clone)]
pub struct LwSimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl fmt::Debug for LwSimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LwSimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Starts the stand-in on 127.0.0.1 and a free port.
pub async fn start(
    config: LwSimConfig,
    script: Script,
    clock: SharedClock,
) -> std::io::Result<LwSimHandle> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config, script, clock).await
}

/// Starts the stand-in on `addr` (`anpi simulator --platform lineworks --listen`).
pub async fn start_on(
    addr: SocketAddr,
    config: LwSimConfig,
    script: Script,
    clock: SharedClock,
) -> std::io::Result<LwSimHandle> {
    let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(config.public_key_pem.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let callback_url = config.callback_url.clone();
    let shared = Arc::new(Shared {
        config,
        clock,
        decoding,
        state: Mutex::new(LwState {
            script,
            tokens: HashMap::new(),
            assertions: Vec::new(),
            windows: HashMap::new(),
            forced: 0,
            forced_reset: Duration::from_secs(1),
            down_until: 0,
            broken: HashSet::new(),
            posts: BTreeMap::new(),
            repeat_cursor: false,
            next_post: 1,
            received: HashMap::new(),
            talked_after_post: HashSet::new(),
            forced_log: Vec::new(),
            accepted_log: Vec::new(),
            request_times: BTreeMap::new(),
            refusals: Vec::new(),
            callbacks: Vec::new(),
            stats: LwStats::default(),
            next_token: 1,
            script_url: callback_url,
        }),
        wake: Notify::new(),
    });
    let stop = CancellationToken::new();
    let app = Router::new()
        .route("/oauth2/v2.0/token", post(token))
        .route("/v1.0/bots/{bot}/users/{user}/messages", post(user_message))
        .route(
            "/v1.0/bots/{bot}/channels/{channel}/messages",
            post(channel_message),
        )
        .route("/v1.0/boards/{board}/posts", post(board_post))
        .route("/v1.0/boards/{board}/posts/{post}/readers", get(readers))
        .with_state(shared.clone());
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
    });
    tokio::spawn(deliver_callbacks(shared.clone(), stop.clone()));
    Ok(LwSimHandle { addr, shared, stop })
}

impl LwSimHandle {
    /// `http://127.0.0.1:PORT/v1.0`.
    pub fn api_base(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/v2.0/token", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &LwSimConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> LwStats {
        self.shared.lock().stats.clone()
    }

    /// Every request refused with 400 or 404, with the reason.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.lock().refusals.clone()
    }

    /// Every assertion the token endpoint accepted.
    pub fn assertions(&self) -> Vec<AcceptedAssertion> {
        self.shared.lock().assertions.clone()
    }

    /// Clock times of the forced 429s and of the accepted 1:1 messages.
    pub fn request_log(&self) -> (Vec<Millis>, Vec<Millis>) {
        let st = self.shared.lock();
        (st.forced_log.clone(), st.accepted_log.clone())
    }

    /// Clock times of the accepted requests of one operation (`user_messages`,
    /// `channel_messages`, `board_posts`, `board_readers`).
    pub fn request_times(&self, op: &str) -> Vec<Millis> {
        self.shared
            .lock()
            .request_times
            .get(op)
            .cloned()
            .unwrap_or_default()
    }

    /// Makes every issued token invalid (the next API call gets 401).
    pub fn revoke_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// The next `n` API requests get 429 with `rateLimit-reset` of `reset`, whatever the window.
    pub fn force_429(&self, n: u32, reset: Duration) {
        let mut st = self.shared.lock();
        st.forced = n;
        st.forced_reset = reset;
    }

    /// Every API request (not the token endpoint) gets 503 for the next `d` of clock time.
    pub fn go_down_for(&self, d: Duration) {
        let now = self.shared.clock.now_millis();
        self.shared.lock().down_until = now + d.as_millis() as i64;
    }

    /// The platform answers again.
    pub fn come_back(&self) {
        let mut st = self.shared.lock();
        st.down_until = 0;
        st.broken.clear();
    }

    /// One operation (`board_readers`, `board_posts`, `user_messages`, `channel_messages`)
    /// answers 503 until [`LwSimHandle::come_back`].
    pub fn break_op(&self, op: &'static str) {
        self.shared.lock().broken.insert(op);
    }

    /// An administrator moves board post `post_id` to the Trash: its readers are not found
    /// any more ("This API operation cannot get a post from Trash", board-post-reader-list).
    pub fn trash_post(&self, post_id: u64) {
        self.shared.lock().posts.remove(&post_id);
    }

    /// The readers operation ignores `cursor` and gives the first page, with the same
    /// `nextCursor`, every time (the operation documents no query parameter).
    pub fn repeat_readers_cursor(&self) {
        self.shared.lock().repeat_cursor = true;
    }

    /// Where anpi's callback endpoint is, once anpi is listening.
    pub fn set_callback_url(&self, url: String) {
        self.shared.lock().script_url = Some(url);
    }

    /// Quick-reply sets this person received (talk and rooms).
    pub fn inbox(&self, who: &ChatHandle) -> Vec<Vec<String>> {
        self.received(who)
            .into_iter()
            .map(|r| r.postbacks)
            .collect()
    }

    /// Every message this person received (talk and rooms), in order.
    pub fn received(&self, who: &ChatHandle) -> Vec<Received> {
        self.shared
            .lock()
            .received
            .get(who)
            .cloned()
            .unwrap_or_default()
    }

    /// Titles of the board posts made, in order.
    pub fn post_titles(&self) -> Vec<String> {
        self.posts().into_iter().map(|p| p.title).collect()
    }

    /// The board posts made, in order.
    pub fn posts(&self) -> Vec<PostInfo> {
        self.shared
            .lock()
            .posts
            .values()
            .map(|p| p.info.clone())
            .collect()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

fn too_many(reset: Duration, limit: u32) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"code": "TOO_MANY_REQUESTS", "description": "API rate limit exceeded"})),
    )
        .into_response();
    let h = resp.headers_mut();
    let secs = reset.as_secs_f64().ceil().max(1.0) as u64;
    h.insert("ratelimit-limit", HeaderValue::from(limit));
    h.insert("ratelimit-remaining", HeaderValue::from(0u32));
    h.insert("ratelimit-reset", HeaderValue::from(secs));
    resp
}

/// The platform's error shape (<https://developers.worksmobile.com/en/docs/rate-limits> shows
/// it for 429: `{"code", "description"}`). The reference names no code for 400 or 404 that
/// anpi could rely on; `INVALID_PARAMETER` and `NOT_FOUND` are used, and the adapter keys
/// only on the status.
fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "description": description})),
    )
        .into_response()
}

impl Shared {
    /// Records a 400 or 404 and builds it.
    fn refuse(&self, op: &'static str, status: StatusCode, description: String) -> Response {
        let mut st = self.lock();
        if status == StatusCode::NOT_FOUND {
            st.stats.not_found += 1;
        } else {
            st.stats.bad_requests += 1;
        }
        tracing::debug!(op, %status, %description, "LINE WORKS stand-in refused a request");
        st.refusals.push(Refusal {
            status: status.as_u16(),
            op,
            description: description.clone(),
        });
        drop(st);
        let code = if status == StatusCode::NOT_FOUND {
            "NOT_FOUND"
        } else {
            "INVALID_PARAMETER"
        };
        error(status, code, &description)
    }

    /// Checks the bearer token, then the operation's window. `Err` is the answer to give.
    fn admit(
        &self,
        headers: &HeaderMap,
        op: &'static str,
        limit: RateLimit,
    ) -> Result<(), Box<Response>> {
        let now = self.clock.now_millis();
        let mut st = self.lock();
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        match st.tokens.get(token) {
            Some(exp) if *exp > now => {}
            _ => {
                st.stats.unauthorized += 1;
                return Err(Box::new(error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "Authentication failed",
                )));
            }
        }
        if now < st.down_until || st.broken.contains(op) {
            st.stats.outage_refused += 1;
            return Err(Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable",
            )));
        }
        if st.forced > 0 {
            st.forced -= 1;
            st.stats.forced_429 += 1;
            st.forced_log.push(now);
            return Err(Box::new(too_many(st.forced_reset, limit.requests)));
        }
        let per = limit.per.as_millis() as i64;
        let window = st.windows.entry(op).or_default();
        while window.front().is_some_and(|t| now - *t >= per) {
            window.pop_front();
        }
        if window.len() >= limit.requests as usize {
            let reset = Duration::from_millis((window[0] + per - now).max(0) as u64);
            st.stats.limit_exceeded += 1;
            return Err(Box::new(too_many(reset, limit.requests)));
        }
        window.push_back(now);
        let n = window.len() as u32;
        st.stats.max_in_window = st.stats.max_in_window.max(n);
        let by_op = st.stats.max_in_window_by_op.entry(op).or_default();
        *by_op = (*by_op).max(n);
        st.request_times.entry(op).or_default().push(now);
        Ok(())
    }

    /// A JSON body with `Content-Type: application/json`, as every POST here requires.
    fn json_body(
        &self,
        op: &'static str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Value, Box<Response>> {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !ct.starts_with("application/json") {
            return Err(Box::new(self.refuse(
                op,
                StatusCode::BAD_REQUEST,
                format!("Content-Type: application/json required, got {ct:?}"),
            )));
        }
        serde_json::from_slice(body).map_err(|e| {
            Box::new(self.refuse(op, StatusCode::BAD_REQUEST, format!("body: not JSON: {e}")))
        })
    }
}

fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

async fn token(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let now_s = s.clock.now().timestamp();
    let refuse = |why: &str| {
        s.lock().stats.token_refused += 1;
        tracing::debug!(reason = why, "LINE WORKS stand-in refused a token request");
        error(StatusCode::BAD_REQUEST, "invalid_request", why)
    };
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return refuse("Content-Type must be application/x-www-form-urlencoded");
    }
    let form = match std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(|b| schema::token_form(&pairs(Some(b))))
    {
        Ok(f) => f,
        Err(why) => return refuse(&why),
    };
    if form.client_id.as_deref() != Some(s.config.client_id.as_str())
        || form.client_secret.as_deref() != Some(s.config.client_secret.as_str())
    {
        return refuse("client_id or client_secret is wrong");
    }
    let assertion = form.assertion.unwrap_or_default();
    let header = match jsonwebtoken::decode_header(&assertion) {
        Ok(h) => h,
        Err(e) => return refuse(&format!("assertion is not a JWT: {e}")),
    };
    if header.typ.as_deref() != Some("JWT") {
        return refuse("the assertion's header must say typ JWT");
    }
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // Expiry is checked below on the shared clock, not the wall.
    v.validate_exp = false;
    v.required_spec_claims.clear();
    let claims = match jsonwebtoken::decode::<AssertionClaims>(&assertion, &s.decoding, &v) {
        Ok(d) => d.claims,
        Err(e) => return refuse(&format!("assertion signature or form is invalid: {e}")),
    };
    if claims.iss != s.config.client_id || claims.sub != s.config.service_account {
        return refuse("iss must be the client id and sub the service account");
    }
    if claims.exp <= now_s || claims.iat > now_s + 60 || claims.exp - claims.iat > 3600 {
        return refuse("the assertion is expired, from the future, or lives over 60 minutes");
    }
    let mut st = s.lock();
    let tok = format!("lw-test-token-{}", st.next_token);
    st.next_token += 1;
    st.tokens.insert(
        tok.clone(),
        s.clock.now_millis() + s.config.token_lifetime.as_millis() as i64,
    );
    st.assertions.push(AcceptedAssertion { claims });
    st.stats.tokens_issued += 1;
    Json(json!({
        "access_token": tok,
        "refresh_token": "unused",
        "token_type": "Bearer",
        "scope": form.scope,
        "expires_in": s.config.token_lifetime.as_secs().to_string(),
    }))
    .into_response()
}

impl LwState {
    /// What a scripted person does with a message at `now`: taps one of its buttons, or
    /// answers in talk (unless they already did after a board post).
    fn receive(&mut self, who: &ChatHandle, msg: Received) {
        let b = self.script.get(who).cloned().unwrap_or_default();
        if let Some((after, answer)) = &b.answer {
            let at = msg.at + after.as_millis() as i64;
            let body = match answer {
                SimAnswer::Button(v) => msg
                    .postbacks
                    .iter()
                    .find(|d| d.ends_with(&format!(":{v}")))
                    .map(|d| json!({"type": "postback", "data": d})),
                _ if self.talked_after_post.remove(who) => None,
                other => Some(talk(other)),
            };
            if let Some(mut body) = body {
                self.push_callback(who, msg.channel.as_deref(), &mut body, at);
            }
        }
        self.received.entry(who.clone()).or_default().push(msg);
    }

    fn push_callback(
        &mut self,
        who: &ChatHandle,
        channel: Option<&str>,
        body: &mut Value,
        at: Millis,
    ) {
        // Bot callback (bot-callback-message / bot-callback-postback): 1:1 talk carries no
        // channelId.
        let mut source = json!({"userId": who.as_str(), "domainId": 40029600});
        if let Some(c) = channel {
            source["channelId"] = json!(c);
        }
        body["source"] = source;
        body["issuedTime"] = json!(
            crate::clock::from_millis(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        self.callbacks.push(Callback {
            at,
            body: serde_json::to_vec(body).unwrap_or_default(),
        });
    }
}

/// A message event a person sends in talk: a sticker, a reply, or the value typed out.
fn talk(answer: &SimAnswer) -> Value {
    match answer {
        SimAnswer::Sticker(id) => json!({"type": "message",
            "content": {"type": "sticker", "packageId": "1", "stickerId": id}}),
        SimAnswer::Reply(t) => json!({"type": "message", "content": {"type": "text", "text": t}}),
        SimAnswer::Button(v) => json!({"type": "message", "content": {"type": "text", "text": v}}),
    }
}

async fn user_message(
    State(s): State<Arc<Shared>>,
    Path((bot, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const OP: &str = "user_messages";
    if let Err(r) = s.admit(&headers, OP, s.config.rate_limit) {
        return *r;
    }
    if bot != s.config.bot_id {
        return s.refuse(OP, StatusCode::NOT_FOUND, format!("bot {bot} not found"));
    }
    let body = match s.json_body(OP, &headers, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let msg = match schema::message(&body) {
        Ok(m) => m,
        Err(why) => return s.refuse(OP, StatusCode::BAD_REQUEST, why),
    };
    let known = ChatHandle::parse(&user)
        .ok()
        .filter(|h| s.config.members.contains(h));
    let Some(who) = known else {
        return s.refuse(OP, StatusCode::NOT_FOUND, format!("user {user} not found"));
    };
    let now = s.clock.now_millis();
    let mut st = s.lock();
    if st.script.get(&who).is_some_and(|b| b.unknown) {
        st.stats.unknown_user += 1;
        drop(st);
        return s.refuse(OP, StatusCode::NOT_FOUND, format!("user {user} not found"));
    }
    st.stats.user_messages += 1;
    st.accepted_log.push(now);
    st.receive(
        &who,
        Received {
            at: now,
            channel: None,
            text: msg.text,
            postbacks: msg.postbacks,
        },
    );
    drop(st);
    s.wake.notify_one();
    StatusCode::CREATED.into_response()
}

async fn channel_message(
    State(s): State<Arc<Shared>>,
    Path((bot, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const OP: &str = "channel_messages";
    if let Err(r) = s.admit(&headers, OP, s.config.rate_limit) {
        return *r;
    }
    if bot != s.config.bot_id {
        return s.refuse(OP, StatusCode::NOT_FOUND, format!("bot {bot} not found"));
    }
    let Some(members) = s.config.rooms.get(&channel) else {
        return s.refuse(
            OP,
            StatusCode::NOT_FOUND,
            format!("channel {channel} not found"),
        );
    };
    let body = match s.json_body(OP, &headers, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let msg = match schema::message(&body) {
        Ok(m) => m,
        Err(why) => return s.refuse(OP, StatusCode::BAD_REQUEST, why),
    };
    let now = s.clock.now_millis();
    let mut st = s.lock();
    st.stats.channel_messages += 1;
    for m in members {
        st.receive(
            m,
            Received {
                at: now,
                channel: Some(channel.clone()),
                text: msg.text.clone(),
                postbacks: msg.postbacks.clone(),
            },
        );
    }
    drop(st);
    s.wake.notify_one();
    StatusCode::CREATED.into_response()
}

async fn board_post(
    State(s): State<Arc<Shared>>,
    Path(board): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const OP: &str = "board_posts";
    if let Err(r) = s.admit(&headers, OP, s.config.board_rate_limit) {
        return *r;
    }
    if board != s.config.board_id {
        return s.refuse(
            OP,
            StatusCode::NOT_FOUND,
            format!("board {board} not found"),
        );
    }
    let body = match s.json_body(OP, &headers, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let today = s.clock.now().with_timezone(&s.config.zone).date_naive();
    let checked = match schema::board_post(&body, today) {
        Ok(p) => p,
        Err(why) => return s.refuse(OP, StatusCode::BAD_REQUEST, why),
    };
    let now = s.clock.now_millis();
    let mut st = s.lock();
    let id = st.next_post;
    st.next_post += 1;
    st.stats.board_posts += 1;
    let mut reads = HashMap::new();
    for m in &s.config.members {
        let b = st.script.get(m).cloned().unwrap_or_default();
        if b.unknown {
            continue;
        }
        let read = [b.read_after, b.answer.as_ref().map(|a| a.0)]
            .into_iter()
            .flatten()
            .min();
        if let Some(d) = read {
            reads.insert(m.clone(), now + d.as_millis() as i64);
        }
        // A board post has no buttons: a sticker or a reply comes through talk; a tap waits
        // for a message that carries the buttons.
        if let Some((after, answer)) = &b.answer {
            if !matches!(answer, SimAnswer::Button(_)) {
                st.talked_after_post.insert(m.clone());
                let mut body = talk(answer);
                st.push_callback(m, None, &mut body, now + after.as_millis() as i64);
            }
        }
    }
    let info = PostInfo {
        post_id: id,
        title: checked.title.clone(),
        body: checked.body,
        must_read_end: checked.must_read_end,
        enable_comment: checked.enable_comment,
        send_notifications: checked.send_notifications,
        created_at: now,
    };
    st.posts.insert(id, Post { info, reads });
    drop(st);
    s.wake.notify_one();
    // board-post-create: 201 with the post; isMustRead and mustReadPeriod are response fields.
    let mut answer = json!({
        "boardId": board.parse::<u64>().unwrap_or(0),
        "postId": id,
        "title": checked.title,
        "readCount": 0,
        "commentCount": 0,
        "fileCount": 0,
        "createdTime": s.clock.now().with_timezone(&s.config.zone).to_rfc3339(),
        "isMustRead": checked.must_read_end.is_some(),
        "enableComment": checked.enable_comment,
    });
    if let Some(end) = checked.must_read_end {
        answer["mustReadPeriod"] =
            json!({"startDate": today.to_string(), "endDate": end.to_string()});
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

fn encode_cursor(offset: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("readers:{offset}"))
}

fn decode_cursor(c: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::STANDARD.decode(c).ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("readers:")?
        .parse()
        .ok()
}

async fn readers(
    State(s): State<Arc<Shared>>,
    Path((board, post)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    const OP: &str = "board_readers";
    if let Err(r) = s.admit(&headers, OP, s.config.board_rate_limit) {
        return *r;
    }
    s.lock().stats.readers_requests += 1;
    let cursor = match schema::readers_query(&pairs(query.as_deref())) {
        Ok(c) => c,
        Err(why) => return s.refuse(OP, StatusCode::BAD_REQUEST, why),
    };
    if board != s.config.board_id {
        return s.refuse(
            OP,
            StatusCode::NOT_FOUND,
            format!("board {board} not found"),
        );
    }
    let repeat = s.lock().repeat_cursor;
    let start = match cursor.as_deref().map(decode_cursor) {
        _ if repeat => 0,
        None => 0,
        Some(Some(n)) => n,
        Some(None) => {
            return s.refuse(
                OP,
                StatusCode::BAD_REQUEST,
                "cursor: not one this operation gave".into(),
            )
        }
    };
    let now = s.clock.now_millis();
    let st = s.lock();
    let Some(p) = post.parse::<u64>().ok().and_then(|id| st.posts.get(&id)) else {
        drop(st);
        return s.refuse(OP, StatusCode::NOT_FOUND, format!("post {post} not found"));
    };
    let page: Vec<Value> = s
        .config
        .members
        .iter()
        .skip(start)
        .take(READERS_PER_PAGE)
        .map(|m| {
            let read = p.reads.get(m).is_some_and(|t| *t <= now);
            json!({"userId": m.as_str(), "userName": m.as_str(), "isRead": read})
        })
        .collect();
    let end = start + page.len();
    let mut meta = json!({});
    if end < s.config.members.len() {
        meta["nextCursor"] = json!(encode_cursor(end));
    }
    Json(json!({"readers": page, "responseMetaData": meta})).into_response()
}

/// Posts each scripted callback, signed, once the clock reaches it. Like the platform, it
/// never retries.
async fn deliver_callbacks(shared: Arc<Shared>, stop: CancellationToken) {
    let client = reqwest::Client::new();
    loop {
        let now = shared.clock.now_millis();
        let (due, url) = {
            let mut st = shared.lock();
            let url = st.script_url.clone();
            let (due, rest): (Vec<Callback>, Vec<Callback>) = if url.is_some() {
                std::mem::take(&mut st.callbacks)
                    .into_iter()
                    .partition(|c| c.at <= now)
            } else {
                (Vec::new(), std::mem::take(&mut st.callbacks))
            };
            st.callbacks = rest;
            (due, url)
        };
        if let Some(url) = url {
            for c in due {
                let sig = sign(&shared.config.bot_secret, &c.body);
                let res = client
                    .post(&url)
                    .header("content-type", "application/json; charset=UTF-8")
                    .header("X-WORKS-BotId", &shared.config.bot_id)
                    .header("X-WORKS-Signature", sig)
                    .body(c.body)
                    .send()
                    .await;
                let mut st = shared.lock();
                st.stats.callbacks_sent += 1;
                if !res.is_ok_and(|r| r.status() == StatusCode::OK) {
                    st.stats.callbacks_refused += 1;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// A signed callback body for tests: `(body, signature)`.
pub fn signed_callback(bot_secret: &str, body: &Value) -> (Vec<u8>, String) {
    let raw = serde_json::to_vec(body).unwrap_or_default();
    let sig = sign(bot_secret, &raw);
    (raw, sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::{TimeZone, Utc};

    fn handle(s: &str) -> ChatHandle {
        ChatHandle::parse(s).unwrap()
    }

    async fn stand() -> (LwSimHandle, String, reqwest::Client) {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 11, 5, 46, 0).unwrap());
        let mut cfg = LwSimConfig::new(vec![handle("u1"), handle("u2")]);
        cfg.rooms.insert("ch-1".into(), vec![handle("u1")]);
        let lw = start(cfg, Script::new(), Arc::new(clock)).await.unwrap();
        let http = reqwest::Client::new();
        let assertion = {
            let now = Utc
                .with_ymd_and_hms(2026, 3, 11, 5, 46, 0)
                .unwrap()
                .timestamp();
            let claims = AssertionClaims {
                iss: "test-client-id".into(),
                sub: "test.serviceaccount@anpi-test".into(),
                iat: now,
                exp: now + 3600,
            };
            let key =
                jsonwebtoken::EncodingKey::from_rsa_pem(TEST_PRIVATE_KEY_PEM.as_bytes()).unwrap();
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                &claims,
                &key,
            )
            .unwrap()
        };
        let tok: Value = http
            .post(lw.token_url())
            .form(&[
                ("assertion", assertion.as_str()),
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("client_id", "test-client-id"),
                ("client_secret", "test-client-secret"),
                ("scope", "bot board"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = tok["access_token"].as_str().unwrap().to_string();
        (lw, token, http)
    }

    #[tokio::test]
    async fn unknown_boards_posts_channels_and_users_are_404_and_bad_shapes_400() {
        let (lw, token, http) = stand().await;
        let base = lw.api_base();
        let post = |url: String, body: Value| http.post(url).bearer_auth(&token).json(&body).send();
        let text = json!({"content": {"type": "text", "text": "x"}});
        let status = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(
            status(
                post(
                    format!("{base}/boards/999/posts"),
                    json!({"title": "t", "body": "b"})
                )
                .await
                .unwrap()
            ),
            404
        );
        assert_eq!(
            status(
                post(
                    format!("{base}/bots/2000001/channels/nope/messages"),
                    text.clone()
                )
                .await
                .unwrap()
            ),
            404
        );
        assert_eq!(
            status(
                post(
                    format!("{base}/bots/2000001/users/stranger/messages"),
                    text.clone()
                )
                .await
                .unwrap()
            ),
            404
        );
        let r = http
            .get(format!("{base}/boards/100/posts/77/readers"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        // The old board body: refused, naming the field.
        let r = post(
            format!("{base}/boards/100/posts"),
            json!({"title": "t", "body": "b", "isMustRead": true,
                   "mustReadPeriod": {"endDate": "2026-03-12"}}),
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "INVALID_PARAMETER");
        assert!(
            e["description"].as_str().unwrap().contains("isMustRead"),
            "{e}"
        );
        // `count` on readers: refused.
        let r = post(
            format!("{base}/boards/100/posts"),
            json!({"title": "t", "body": "b", "mustReadEndDate": "2026-03-12"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let created: Value = r.json().await.unwrap();
        assert_eq!(created["isMustRead"], true);
        let r = http
            .get(format!("{base}/boards/100/posts/1/readers?count=5000"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        // A 1:1 message with a JSON body but no content type: refused.
        let r = http
            .post(format!("{base}/bots/2000001/users/u1/messages"))
            .bearer_auth(&token)
            .body(text.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let st = lw.stats();
        assert_eq!((st.not_found, st.bad_requests), (4, 3), "{st:?}");
        assert_eq!(lw.refusals().len(), 7);
        assert_eq!(
            lw.posts()[0].must_read_end,
            NaiveDate::from_ymd_opt(2026, 3, 12)
        );
    }
}
