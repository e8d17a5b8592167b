//! The HTTP API (JSON): one router per resource, routes beside their handlers. Bearer tokens
//! carry a role: `hq` may do everything, `caller` may read the call list, claim calls and
//! record outcomes, `shelter` may only acknowledge for the one phone its token is bound to.
//! The HQ web page ([`web`]) is served here too and uses the same API and tokens.
//!
//! Invariants: a request without a valid token, or with too small a role, is refused before
//! it touches anything; tokens are compared in constant time and never logged; client errors
//! say what to fix, server errors are opaque and logged.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_http::timeout::TimeoutLayer;
use tracing::error;

use crate::config::Config;
use crate::hq::{Hq, HqError};
use crate::ids::StaffId;
use crate::metrics::Metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod announcements;
mod callbacks;
mod calls;
mod contacts;
mod health;
mod jma;
pub mod ops;
mod rollcalls;
pub mod stream;
mod web;

/// Who may do what. `Hq` may do everything a `Caller` may; a `Shelter` token may only
/// acknowledge for its own phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Shelter,
    Caller,
    Hq,
}

impl Role {
    /// Whether a token of this role may use an endpoint that needs `needed`.
    fn allows(self, needed: Role) -> bool {
        match needed {
            Role::Shelter => self == Role::Shelter,
            Role::Caller => self >= Role::Caller,
            Role::Hq => self == Role::Hq,
        }
    }
}

/// The caller, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    pub role: Role,
    /// "hq#1", "caller#2", "shelter#1": which token, for the record of who made a call.
    pub name: String,
    /// For a shelter token: the one phone it speaks for.
    pub shelter_phone: Option<StaffId>,
}

#[derive(Clone)]
pub struct ApiState {
    pub hq: Arc<Hq>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Fires at shutdown, so endless responses (event streams) end and the server can stop.
    pub shutdown: CancellationToken,
    /// Told after each escalation (the deadline worker's), so streams update at once.
    pub escalated: Arc<Notify>,
    /// Provider trouble HQ is shown ([`crate::health`]).
    pub health: Arc<crate::health::Health>,
    /// The JMA decision engine, for `anpi jma replay` and the trigger views.
    pub jma: Option<Arc<crate::jma::Engine>>,
    /// Checks `/healthz` runs besides its own (see [`ops::HealthChecks`]).
    pub checks: Arc<ops::HealthChecks>,
    /// Each roll call's live progress, computed once and shared by its streams.
    pub live: Arc<stream::Live>,
}

impl ApiState {
    pub fn new(hq: Arc<Hq>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let health = Arc::new(crate::health::Health::new(
            hq.clock().clone(),
            config.health.degraded_after,
        ));
        Self {
            hq,
            config,
            metrics,
            shutdown: CancellationToken::new(),
            escalated: Arc::new(Notify::new()),
            health,
            jma: None,
            checks: Arc::default(),
            live: Arc::default(),
        }
    }

    /// Adds the checks other parts of anpi registered to `/healthz`.
    pub fn with_checks(mut self, checks: Arc<ops::HealthChecks>) -> Self {
        self.checks = checks;
        self
    }

    /// Shows the provider trouble `health` knows of.
    pub fn with_health(mut self, health: Arc<crate::health::Health>) -> Self {
        self.health = health;
        self
    }

    /// Lets the API replay telegrams and show what triggered a roll call.
    pub fn with_jma(mut self, engine: Arc<crate::jma::Engine>) -> Self {
        self.jma = Some(engine);
        self
    }

    /// Ends event streams when `cancel` fires.
    pub fn with_shutdown(mut self, cancel: CancellationToken) -> Self {
        self.shutdown = cancel;
        self
    }

    /// Wakes event streams when the deadline worker escalates.
    pub fn with_escalated(mut self, escalated: Arc<Notify>) -> Self {
        self.escalated = escalated;
        self
    }

    /// Checks the bearer token and that its role may do what needs `needed`.
    pub fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<Principal, ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized("send Authorization: Bearer <token>"))?;
        self.authorize_token(token, needed)
    }

    /// Checks a token given some other way (an event stream's `?token=`).
    pub fn authorize_token(&self, token: &str, needed: Role) -> Result<Principal, ApiError> {
        let mut found = None;
        // Compare against every token (no early exit) so timing reveals nothing.
        for (role, list, label) in [
            (Role::Hq, &self.config.api.hq_tokens, "hq"),
            (Role::Caller, &self.config.api.caller_tokens, "caller"),
        ] {
            for (i, t) in list.iter().enumerate() {
                if bool::from(t.expose().as_bytes().ct_eq(token.as_bytes())) && found.is_none() {
                    found = Some(Principal {
                        role,
                        name: format!("{label}#{}", i + 1),
                        shelter_phone: None,
                    });
                }
            }
        }
        for (i, s) in self.config.api.shelter_tokens.iter().enumerate() {
            if bool::from(s.token.expose().as_bytes().ct_eq(token.as_bytes())) && found.is_none() {
                found = Some(Principal {
                    role: Role::Shelter,
                    name: format!("shelter#{}", i + 1),
                    // Checked when the configuration was loaded.
                    shelter_phone: s.staff().ok(),
                });
            }
        }
        let p = found.ok_or(ApiError::Unauthorized("the token is not valid"))?;
        if !p.role.allows(needed) {
            return Err(ApiError::Forbidden(
                "this token's role may not do this; ask HQ",
            ));
        }
        Ok(p)
    }
}

/// The `Idempotency-Key` header, if sent: a double click sends the same key twice.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be plain text".into()))?
        .trim();
    if k.is_empty() || k.len() > 200 {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 200 characters".into(),
        ));
    }
    Ok(Some(k.to_string()))
}

/// At most the first 80 characters of something a client sent, for an error message.
pub(crate) fn short(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

/// An API error, with a message a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl From<HqError> for ApiError {
    fn from(e: HqError) -> Self {
        match e {
            HqError::NotFound(_) => Self::NotFound(e.to_string()),
            HqError::NoContacts | HqError::EmptyAudience(_) => Self::Conflict(e.to_string()),
            HqError::Invalid(m) => Self::Unprocessable(m),
            HqError::Store(crate::store::StoreError::NoSuchRecipient { .. }) => {
                Self::NotFound(e.to_string())
            }
            HqError::Store(
                crate::store::StoreError::Closed(_) | crate::store::StoreError::Conflict(_),
            ) => Self::Conflict(e.to_string()),
            HqError::Store(s) => Self::Internal(s.into()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge(r.body_text()),
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable(r.body_text()),
            _ => Self::BadRequest(r.body_text()),
        }
    }
}

/// At most `max` characters of `s`, with "…" when cut: an error that quotes bad input quotes
/// only this much of it.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The longest client error message sent back, in characters. Messages are written to quote
/// input sparingly; this bounds any that quote it whole (a parser's message, say).
const MAX_ERROR_CHARS: usize = 600;

/// The longest line of a client error message: a quoted line of bad input is cut here.
const MAX_ERROR_LINE: usize = 200;

/// A client error message with every line, and the whole, cut to a sensible length.
fn bounded(message: &str) -> String {
    let lines: Vec<String> = message.lines().map(|l| clip(l, MAX_ERROR_LINE)).collect();
    clip(&lines.join("\n"), MAX_ERROR_CHARS)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(e) => {
                error!(error = %format!("{e:#}"), "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": bounded(&self.to_string()) }))).into_response()
    }
}

/// The whole API.
pub fn router(state: ApiState, config: &Config) -> Router {
    Router::new()
        .merge(ops::router())
        .merge(web::router())
        .merge(callbacks::router())
        .nest(
            "/api",
            rollcalls::router()
                .merge(contacts::router())
                .merge(calls::router())
                .merge(announcements::router())
                .merge(health::router())
                .merge(jma::router())
                .merge(stream::router()),
        )
        .layer(DefaultBodyLimit::max(config.server.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.server.request_timeout,
        ))
        .with_state(state)
}
