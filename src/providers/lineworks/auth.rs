//! Service-account authentication: the signed JWT assertion, the access token it is exchanged
//! for (cached, re-minted before it expires), and API calls that refresh the token exactly
//! once when the platform answers 401.

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{refusal, LineWorksProvider, LINE_WORKS};
use crate::clock::Millis;
use crate::health::Component;
use crate::providers::http::excerpt;
use crate::providers::ProviderError;

/// A token is re-minted this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// How long after a refused login (or a refused fresh token) anpi asks again: every send in
/// between gets the same answer without a request of its own.
const LOGIN_REFUSED_WAIT: Duration = Duration::from_secs(30);
const LOGIN_REFUSED_WAIT_MS: Millis = LOGIN_REFUSED_WAIT.as_millis() as Millis;

/// The JWT assertion's lifetime (the platform allows at most 60 minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

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

/// The access token, and a login refused a moment ago (until when it stands).
#[derive(Default)]
pub(super) struct TokenCache {
    token: Option<CachedToken>,
    refused: Option<(Millis, ProviderError)>,
}

#[derive(Clone)]
pub(super) struct CachedToken {
    value: String,
    /// Clock millis when it was minted.
    minted_at: Millis,
    /// Minted because the platform refused the one before.
    replaced_a_refused_one: bool,
    /// Clock millis after which it is re-minted.
    renew_at: Millis,
}

impl LineWorksProvider {
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
            .map_err(|e| LINE_WORKS.transport_error(e))?;
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(refusal(resp).await);
        }
        let body = resp
            .text()
            .await
            .map_err(|e| LINE_WORKS.transport_error(e))?;
        if !status.is_success() {
            // Credentials are wrong: nothing will work for anyone until an admin fixes them.
            return Err(ProviderError::Unauthorized {
                after: LOGIN_REFUSED_WAIT,
                reason: format!(
                    "LINE WORKS refused the service-account login ({status}): {}; fix the \
                     client id, client secret, service account or private key in \
                     [providers.lineworks] and restart anpi",
                    excerpt(&body)
                ),
            });
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
            minted_at: self.clock.now_millis(),
            replaced_a_refused_one: false,
            renew_at: self.clock.now_millis() + lifetime_ms,
        })
    }

    /// The cached token, re-minted when it is near its expiry or when `stale` (a token the
    /// platform just refused) is still the cached one.
    pub(super) async fn token(&self, stale: Option<&str>) -> Result<String, ProviderError> {
        let mut cached = self.token.lock().await;
        let now = self.clock.now_millis();
        if let Some((until, refused)) = cached.refused.as_ref() {
            // The credentials were refused a moment ago: every send in the meantime gets the
            // same answer, not a login request of its own.
            if now < *until {
                return Err(refused.clone());
            }
        }
        if let Some(t) = cached.token.as_ref() {
            if now < t.renew_at && stale != Some(t.value.as_str()) {
                return Ok(t.value.clone());
            }
            if stale == Some(t.value.as_str())
                && t.replaced_a_refused_one
                && now < t.minted_at + LOGIN_REFUSED_WAIT_MS
            {
                // A token minted because the last one was refused is refused too: another
                // would fare no better now.
                return Err(fresh_token_refused());
            }
        }
        let minted = self.mint().await;
        if minted.is_err() {
            // Success is reported by the first request the token gets through (`call`).
            self.report(Component::Token, &minted);
        }
        cached.refused = match &minted {
            Err(e @ ProviderError::Unauthorized { after, .. }) => {
                Some((now + after.as_millis() as i64, e.clone()))
            }
            _ => None,
        };
        let mut t = minted?;
        t.replaced_a_refused_one = stale.is_some();
        let v = t.value.clone();
        cached.token = Some(t);
        Ok(v)
    }

    /// Sends an API request with the access token; on 401, refreshes once and retries once.
    pub(super) async fn call(
        &self,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, ProviderError> {
        let token = self.token(None).await?;
        let resp = build()
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| LINE_WORKS.transport_error(e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            self.report(Component::Token, &Ok(()));
            return Ok(resp);
        }
        let token = match self.token(Some(&token)).await {
            Ok(token) => token,
            Err(e) => {
                self.report(Component::Token, &Err::<(), _>(e.clone()));
                return Err(e);
            }
        };
        let resp = build()
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| LINE_WORKS.transport_error(e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Only this API may refuse it (a scope the app lacks): other calls go on, and
            // this token is not replaced for a while (see `token`).
            let refused = fresh_token_refused();
            self.report(Component::Token, &Err::<(), _>(refused.clone()));
            return Err(refused);
        }
        self.report(Component::Token, &Ok(()));
        Ok(resp)
    }
}

fn fresh_token_refused() -> ProviderError {
    ProviderError::Unauthorized {
        after: LOGIN_REFUSED_WAIT,
        reason: "LINE WORKS refused a freshly minted access token: check the app's scopes \
                 (bot, bot.message, board) in the Developer Console and restart anpi"
            .into(),
    }
}

/// `expires_in` comes as a number or as a string of one.
pub(super) fn expires_in(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
