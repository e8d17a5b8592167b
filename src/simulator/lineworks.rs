//! A LINE WORKS-compatible stand-in server, its own axum app on loopback, that enforces the
//! documented API 2.0 rules the adapter must live with: a token endpoint that checks the
//! service-account JWT (RS256) against a test public key, 401 for unknown or expired tokens,
//! 201-with-no-body sends, a sliding-window rate limit per API operation answered with 429
//! `{"code":"TOO_MANY_REQUESTS"}` and `rateLimit-*` headers, must-read board posts whose
//! readers list pages by cursor, no read receipt for talk, and signed callbacks POSTed to anpi
//! when a scripted person taps a button, replies or sends a sticker.
//!
//! Invariants: limits are counted on the shared clock, exactly (a request that arrives when
//! its operation's window is full is counted in [`LwStats::limit_exceeded`]: the client broke
//! the limit); a forced 429 is never counted as the client's fault; a person's board read
//! appears only once the clock reaches it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Behaviour, Script, SimAnswer};
use crate::clock::{Millis, SharedClock};
use crate::ids::ChatHandle;
use crate::providers::lineworks::{sign, AssertionClaims};
use crate::providers::RateLimit;

/// TEST-ONLY key pair (tests/fixtures/README.md): never registered anywhere, protects nothing.
pub const TEST_PRIVATE_KEY_PEM: &str =
    include_str!("../../tests/fixtures/lineworks-test-private-key.TEST-ONLY.pem");
pub const TEST_PUBLIC_KEY_PEM: &str =
    include_str!("../../tests/fixtures/lineworks-test-public-key.TEST-ONLY.pem");

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
        }
    }
}

/// Counters a test checks the adapter against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LwStats {
    pub tokens_issued: u64,
    /// Token requests refused (bad JWT, wrong client, wrong grant).
    pub token_refused: u64,
    /// API requests refused with 401.
    pub unauthorized: u64,
    pub user_messages: u64,
    pub channel_messages: u64,
    pub board_posts: u64,
    pub readers_requests: u64,
    /// Requests that arrived with their operation's window full: the client's fault.
    pub limit_exceeded: u64,
    pub forced_429: u64,
    /// The most requests of one operation seen in any window.
    pub max_in_window: u32,
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

struct Post {
    rc_title: String,
    created_at: Millis,
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
    posts: BTreeMap<u64, Post>,
    next_post: u64,
    /// Clock times of forced 429s and of accepted 1:1 messages, for pacing checks.
    forced_log: Vec<Millis>,
    accepted_log: Vec<Millis>,
    /// Handle -> quick-reply data of messages received.
    inbox: HashMap<ChatHandle, Vec<Vec<String>>>,
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
    addr: std::net::SocketAddr,
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
    let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(config.public_key_pem.as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
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
            posts: BTreeMap::new(),
            next_post: 1,
            inbox: HashMap::new(),
            forced_log: Vec::new(),
            accepted_log: Vec::new(),
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

    pub fn config(&self) -> &LwSimConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> LwStats {
        self.shared.lock().stats.clone()
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

    /// Where anpi's callback endpoint is, once anpi is listening.
    pub fn set_callback_url(&self, url: String) {
        self.shared.lock().script_url = Some(url);
    }

    /// Quick-reply sets this person received (talk and rooms).
    pub fn inbox(&self, who: &ChatHandle) -> Vec<Vec<String>> {
        self.shared
            .lock()
            .inbox
            .get(who)
            .cloned()
            .unwrap_or_default()
    }

    /// Titles of the board posts made, in order.
    pub fn post_titles(&self) -> Vec<String> {
        self.shared
            .lock()
            .posts
            .values()
            .map(|p| p.rc_title.clone())
            .collect()
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

fn too_many(reset: Duration, limit: u32) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"code": "TOO_MANY_REQUESTS", "description": "Too many requests"})),
    )
        .into_response();
    let h = resp.headers_mut();
    let secs = reset.as_secs_f64().ceil().max(1.0) as u64;
    h.insert("ratelimit-limit", HeaderValue::from(limit));
    h.insert("ratelimit-remaining", HeaderValue::from(0u32));
    h.insert("ratelimit-reset", HeaderValue::from(secs));
    resp
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "description": description})),
    )
        .into_response()
}

impl Shared {
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
        Ok(())
    }
}

#[derive(Deserialize)]
struct TokenForm {
    assertion: Option<String>,
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

async fn token(State(s): State<Arc<Shared>>, Form(f): Form<TokenForm>) -> Response {
    let now_s = s.clock.now().timestamp();
    let refuse = |why: &str| {
        s.lock().stats.token_refused += 1;
        error(StatusCode::BAD_REQUEST, "invalid_request", why)
    };
    if f.grant_type.as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return refuse("grant_type must be urn:ietf:params:oauth:grant-type:jwt-bearer");
    }
    if f.client_id.as_deref() != Some(s.config.client_id.as_str())
        || f.client_secret.as_deref() != Some(s.config.client_secret.as_str())
    {
        return refuse("client_id or client_secret is wrong");
    }
    if f.scope.as_deref().is_none_or(str::is_empty) {
        return refuse("scope is required");
    }
    let Some(assertion) = f.assertion else {
        return refuse("assertion is required");
    };
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
        "scope": f.scope,
        "expires_in": s.config.token_lifetime.as_secs().to_string(),
    }))
    .into_response()
}

/// Quick-reply data in a message body; `Err` when the body breaks the platform's rules.
fn quick_replies(body: &Value) -> Result<Vec<String>, &'static str> {
    let content = body.get("content").ok_or("content is required")?;
    if content.get("type").and_then(Value::as_str) != Some("text")
        || content.get("text").and_then(Value::as_str).is_none()
    {
        return Err("content.type text with content.text is required");
    }
    let items = content
        .pointer("/quickReply/items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.len() > 13 {
        return Err("quickReply.items holds at most 13");
    }
    Ok(items
        .iter()
        .filter_map(|i| i.pointer("/action/data").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

impl LwState {
    /// What a scripted person does with a message carrying `data` (quick replies) at `now`.
    fn receive(&mut self, who: &ChatHandle, data: Vec<String>, now: Millis) {
        let b = self.script.get(who).cloned().unwrap_or_default();
        if let Some((after, answer)) = &b.answer {
            let at = now + after.as_millis() as i64;
            let body = match answer {
                SimAnswer::Button(v) => data
                    .iter()
                    .find(|d| d.ends_with(&format!(":{v}")))
                    .map(|d| json!({"type": "postback", "data": d})),
                _ => None,
            };
            if let Some(mut body) = body {
                self.push_callback(who, &mut body, at);
            }
        }
        self.inbox.entry(who.clone()).or_default().push(data);
    }

    fn push_callback(&mut self, who: &ChatHandle, body: &mut Value, at: Millis) {
        body["source"] = json!({"userId": who.as_str(), "domainId": 1});
        body["issuedTime"] = json!(
            crate::clock::from_millis(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        self.callbacks.push(Callback {
            at,
            body: serde_json::to_vec(body).unwrap_or_default(),
        });
    }
}

async fn user_message(
    State(s): State<Arc<Shared>>,
    Path((bot, user)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = s.admit(&headers, "user_messages", s.config.rate_limit) {
        return *r;
    }
    if bot != s.config.bot_id {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "bot not found");
    }
    let data = match quick_replies(&body) {
        Ok(d) => d,
        Err(why) => return error(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", why),
    };
    let Ok(who) = ChatHandle::parse(&user) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "user not found");
    };
    let now = s.clock.now_millis();
    let mut st = s.lock();
    if st.script.get(&who).is_some_and(|b: &Behaviour| b.unknown) {
        st.stats.unknown_user += 1;
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "user not found");
    }
    st.stats.user_messages += 1;
    st.accepted_log.push(now);
    st.receive(&who, data, now);
    drop(st);
    s.wake.notify_one();
    StatusCode::CREATED.into_response()
}

async fn channel_message(
    State(s): State<Arc<Shared>>,
    Path((bot, channel)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = s.admit(&headers, "channel_messages", s.config.rate_limit) {
        return *r;
    }
    if bot != s.config.bot_id {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "bot not found");
    }
    let Some(members) = s.config.rooms.get(&channel) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "channel not found");
    };
    let data = match quick_replies(&body) {
        Ok(d) => d,
        Err(why) => return error(StatusCode::BAD_REQUEST, "INVALID_PARAMETER", why),
    };
    let now = s.clock.now_millis();
    let mut st = s.lock();
    st.stats.channel_messages += 1;
    for m in members {
        st.receive(m, data.clone(), now);
    }
    drop(st);
    s.wake.notify_one();
    StatusCode::CREATED.into_response()
}

async fn board_post(
    State(s): State<Arc<Shared>>,
    Path(board): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = s.admit(&headers, "board_posts", s.config.board_rate_limit) {
        return *r;
    }
    if board != s.config.board_id {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "board not found");
    }
    let (Some(title), Some(_)) = (
        body.get("title").and_then(Value::as_str),
        body.get("body").and_then(Value::as_str),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "title and body are required",
        );
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
        // Board readers cannot tap a button; a sticker or a reply comes through talk.
        if let Some((after, answer)) = &b.answer {
            let mut body = match answer {
                SimAnswer::Sticker(id) => json!({"type": "message",
                    "content": {"type": "sticker", "packageId": "1", "stickerId": id}}),
                SimAnswer::Reply(t) => {
                    json!({"type": "message", "content": {"type": "text", "text": t}})
                }
                SimAnswer::Button(v) => {
                    json!({"type": "message", "content": {"type": "text", "text": v}})
                }
            };
            st.push_callback(m, &mut body, now + after.as_millis() as i64);
        }
    }
    st.posts.insert(
        id,
        Post {
            rc_title: title.to_string(),
            created_at: now,
            reads,
        },
    );
    drop(st);
    s.wake.notify_one();
    (
        StatusCode::CREATED,
        Json(
            json!({"boardId": board.parse::<u64>().unwrap_or(0), "postId": id, "title": title,
                    "isMustRead": true}),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ReadersQuery {
    count: Option<usize>,
    cursor: Option<String>,
}

async fn readers(
    State(s): State<Arc<Shared>>,
    Path((board, post)): Path<(String, u64)>,
    headers: HeaderMap,
    Query(q): Query<ReadersQuery>,
) -> Response {
    if let Err(r) = s.admit(&headers, "board_readers", s.config.board_rate_limit) {
        return *r;
    }
    let now = s.clock.now_millis();
    let mut st = s.lock();
    st.stats.readers_requests += 1;
    let Some(p) = st.posts.get(&post).filter(|_| board == s.config.board_id) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "post not found");
    };
    let count = q.count.unwrap_or(100).clamp(1, 5000);
    let start: usize = match q.cursor.as_deref().map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                "cursor is invalid",
            )
        }
    };
    let _ = p.created_at;
    let page: Vec<Value> = s
        .config
        .members
        .iter()
        .skip(start)
        .take(count)
        .map(|m| {
            let read = p.reads.get(m).is_some_and(|t| *t <= now);
            json!({"userId": m.as_str(), "userName": m.as_str(), "isRead": read})
        })
        .collect();
    let end = start + page.len();
    let next = (end < s.config.members.len()).then(|| end.to_string());
    let mut meta = json!({});
    if let Some(n) = next {
        meta["nextCursor"] = json!(n);
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
                    .header("content-type", "application/json")
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
