//! The homeserver client: building it, the client-server API's URLs, the lookups the other
//! parts share (membership, profile, one event), and the one place every answer that is not
//! a success is classified into a [`ProviderError`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Response, StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use super::MatrixProvider;
use crate::clock::SharedClock;
use crate::config::{MatrixConfig, Secret};
use crate::health::{Component, Health};
use crate::providers::http::{self, Platform};
use crate::providers::ProviderError;
use crate::store::SharedStore;

/// Per-request budget; a `/sync` gets this on top of its long-poll wait.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeline events per room in one `/sync` (and per page when paging back): more than a
/// person writes between two polls.
pub(super) const TIMELINE_LIMIT: u32 = 100;

/// The other end, as reasons name it; a 429 without a wait lasts a second.
pub(super) const HOMESERVER: Platform = Platform {
    name: "homeserver",
    the: "the homeserver",
    reset_header: None,
    default_reset: Duration::from_secs(1),
};

/// How many times `prepare` waits out a 429 for one room before giving up on it.
pub(super) const PREPARE_ATTEMPTS: u32 = 20;

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
        let client = http::client(max_in_flight + 1, REQUEST_TIMEOUT);
        let auth = bearer(token)?;
        // What a person does in their room: the same for `/sync` and for paging back.
        let timeline = json!({
            "types": ["m.room.message", "m.reaction", "m.sticker", "m.room.encrypted"],
            "not_senders": [config.user_id],
            "limit": TIMELINE_LIMIT,
        });
        let filter = json!({
            "presence": {"types": []},
            "account_data": {"types": []},
            "room": {
                "state": {"types": []},
                "account_data": {"types": []},
                "timeline": timeline,
                "ephemeral": {"types": ["m.receipt"]},
            },
        })
        .to_string();
        Ok(Self {
            client,
            homeserver,
            auth: std::sync::RwLock::new(auth),
            token_file: config.access_token_file.clone(),
            token: Default::default(),
            bot: config.user_id.clone(),
            store,
            clock,
            rate_limit: config.rate_limit(),
            max_in_flight,
            filter,
            timeline_filter: timeline.to_string(),
            reconciled: std::sync::atomic::AtomicBool::new(false),
            patient: std::sync::atomic::AtomicBool::new(false),
            health: None,
        })
    }

    /// The `Authorization` header for the current token.
    pub(super) fn auth(&self) -> HeaderValue {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Classifies an answer that is not a success (see [`refusal`]). When the homeserver
    /// refused the bot's token, HQ is told at once (the health component `token`) and the
    /// token file is read again: a token an admin has put there since is used from the next
    /// try, with no restart.
    pub(super) async fn refused(&self, resp: Response, what: &str) -> ProviderError {
        match refusal(resp, what).await {
            ProviderError::Unauthorized { after, reason } => {
                let reason = match &self.token_file {
                    Some(path) => format!(
                        "{reason}; put a valid token in {} (read again at the next refusal)",
                        path.display()
                    ),
                    None => format!(
                        "{reason}; restart anpi with a valid token (providers.matrix.access_token \
                         or ANPI_PROVIDERS__MATRIX__ACCESS_TOKEN)"
                    ),
                };
                self.token_refused(&reason);
                ProviderError::Unauthorized { after, reason }
            }
            e => e,
        }
    }

    fn token_refused(&self, reason: &str) {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        // Requests sent with the old token may still come back refused just after a new one
        // was read: that is not news, and the new token's own answers will tell.
        let just_changed = token
            .changed_at
            .is_some_and(|t| t.elapsed() < REQUEST_TIMEOUT);
        if !token.refused && !just_changed {
            token.refused = true;
            tracing::error!(%reason, "the homeserver refused the bot's access token");
            if let Some(h) = &self.health {
                h.failing_now(Component::Token, reason);
            }
        }
        let Some(path) = &self.token_file else {
            return;
        };
        let fresh = match MatrixConfig::token_from_file(path).map(|t| bearer(&t)) {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the token file holds no usable token");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the token file again");
                return;
            }
        };
        let mut auth = self.auth.write().unwrap_or_else(|e| e.into_inner());
        if *auth != fresh {
            *auth = fresh;
            token.changed_at = Some(std::time::Instant::now());
            tracing::info!(file = %path.display(), "read a new access token from the token file");
        }
    }

    /// The homeserver accepted the bot's token (a send or a sync went through).
    pub(super) fn token_accepted(&self) {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if token.refused {
            token.refused = false;
            tracing::info!("the homeserver accepts the bot's access token again");
        }
        drop(token);
        if let Some(h) = &self.health {
            h.ok(Component::Token);
        }
    }

    /// Reports events the homeserver skipped in a watched room to `health`.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// `<homeserver>/_matrix/client/v3/<segments...>`, each segment percent-encoded.
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.homeserver.clone();
        {
            // `new` refused URLs that cannot be a base, so this always has path segments.
            let mut path = u.path_segments_mut().expect("a base URL");
            path.pop_if_empty().extend(["_matrix", "client", "v3"]);
            path.extend(segments);
        }
        u
    }

    /// Sends one request, waiting out the homeserver's 429s and brief outages as `prepare`
    /// does (it runs ahead of a roll call, so waiting is right); outside `prepare`, once.
    pub(super) async fn patiently(
        &self,
        what: &str,
        req: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, ProviderError> {
        let attempts = if self.patient.load(std::sync::atomic::Ordering::Relaxed) {
            PREPARE_ATTEMPTS
        } else {
            1
        };
        self.retrying(what, attempts, Duration::MAX, req).await
    }

    /// Sends one request up to `attempts` times, waiting out a 429 or a brief outage (the
    /// homeserver's wait, at most `longest`) between tries. Any other answer, a success
    /// included, is returned as it came.
    pub(super) async fn retrying(
        &self,
        what: &str,
        attempts: u32,
        longest: Duration,
        req: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, ProviderError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failed = match req().header(AUTHORIZATION, self.auth()).send().await {
                Ok(resp)
                    if resp.status() != StatusCode::TOO_MANY_REQUESTS
                        && !resp.status().is_server_error() =>
                {
                    return Ok(resp)
                }
                Ok(resp) => self.refused(resp, what).await,
                Err(e) => HOMESERVER.transport_error(e),
            };
            let wait = match &failed {
                ProviderError::RateLimited { reset } => *reset,
                ProviderError::Retryable { after, .. } => after.unwrap_or(Duration::from_secs(1)),
                _ => return Err(failed),
            };
            if attempt >= attempts {
                return Err(failed);
            }
            tokio::time::sleep(wait.min(longest)).await;
        }
    }

    /// `user`'s membership of `room` ("join", "invite", "leave", "ban"), `None` when they
    /// have none.
    pub(super) async fn membership(
        &self,
        room: &str,
        user: &str,
    ) -> Result<Option<String>, ProviderError> {
        let url = self.url(&["rooms", room, "state", "m.room.member", user]);
        let resp = self
            .patiently("membership", || self.client.get(url.clone()))
            .await?;
        match resp.status() {
            s if s.is_success() => {
                let v: Value = HOMESERVER.read_json(resp, "membership").await?;
                Ok(v["membership"].as_str().map(str::to_string))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.refused(resp, "membership").await),
        }
    }

    /// Whether the homeserver knows `user` (the profile lookup; a server that keeps profiles
    /// private answers 403, which says nothing, so the user is taken to exist).
    pub(super) async fn user_exists(&self, user: &str) -> Result<bool, ProviderError> {
        let url = self.url(&["profile", user]);
        let resp = self
            .patiently("profile", || self.client.get(url.clone()))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::FORBIDDEN => Ok(true),
            _ => Err(self.refused(resp, "profile").await),
        }
    }

    /// Fetches one event; `None` when the homeserver will not show it (gone, or not visible).
    pub(super) async fn fetch_event(
        &self,
        room: &str,
        event: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let resp = self
            .client
            .get(self.url(&["rooms", room, "event", event]))
            .header(AUTHORIZATION, self.auth())
            .send()
            .await
            .map_err(|e| HOMESERVER.transport_error(e))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(HOMESERVER.read_json(resp, "event").await?)),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => Ok(None),
            _ => Err(self.refused(resp, "event lookup").await),
        }
    }
}

/// `Bearer <token>`, marked sensitive so that it is never logged.
fn bearer(token: &Secret) -> Result<HeaderValue, ProviderError> {
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ProviderError::Permanent("the Matrix access token is not valid".into()))?;
    auth.set_sensitive(true);
    Ok(auth)
}

/// How long before a request the homeserver refused for the bot's token is tried again.
const TOKEN_REFUSED_WAIT: Duration = Duration::from_secs(10);

/// A Matrix error body.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: String,
    #[serde(default)]
    error: String,
    retry_after_ms: Option<u64>,
}

/// Classifies an answer that is not a success. `what` names the request for the reason.
async fn refusal(resp: Response, what: &str) -> ProviderError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
    classify(status, &headers, &body, what)
}

fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &ErrorBody,
    what: &str,
) -> ProviderError {
    // Matrix also says "rate limited" in the body, with its own wait, which comes first.
    if status == StatusCode::TOO_MANY_REQUESTS || body.errcode == "M_LIMIT_EXCEEDED" {
        let reset = body
            .retry_after_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| HOMESERVER.rate_limit_reset(headers));
        return ProviderError::RateLimited { reset };
    }
    if let Some(e) = HOMESERVER.temporary(status, headers) {
        return match e {
            ProviderError::Retryable { after, reason } => ProviderError::Retryable {
                after,
                reason: format!("{what}: {reason}"),
            },
            e => e,
        };
    }
    let detail = http::excerpt(format!("{} {}", body.errcode, body.error).trim());
    if status == StatusCode::UNAUTHORIZED {
        // The bot's problem, not the person's: nobody is put on the call list for it (see
        // `MatrixProvider::refused`, which adds what to do).
        return ProviderError::Unauthorized {
            after: TOKEN_REFUSED_WAIT,
            reason: format!("{what}: the homeserver refused the bot's access token ({detail})"),
        };
    }
    ProviderError::Permanent(match status {
        StatusCode::FORBIDDEN => {
            format!("{what}: the bot may not do this in the room ({detail})")
        }
        StatusCode::NOT_FOUND => format!("{what}: unknown room or user ({detail})"),
        _ => format!("{what}: homeserver answered {status} ({detail})"),
    })
}
