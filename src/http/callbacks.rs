//! `POST /callbacks/lineworks`: the LINE WORKS bot's callback endpoint (button taps, replies,
//! stickers). Authenticated by the platform's signature, not by an anpi token.
//!
//! Invariants: a body over [`CALLBACK_BODY_LIMIT`] gets 413 and is neither read whole nor
//! stored; a wrong `X-WORKS-BotId` or a bad `X-WORKS-Signature` gets 401 and changes nothing
//! (compared in constant time, before the body is parsed); a malformed body gets 400; a
//! callback is written to the event log through the receipt path before 200 is answered,
//! because the platform never sends it again; a replay of the same body is one event; an
//! event anpi does not use (another bot's postback, a join) is answered 200 and logged.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tracing::{debug, info};

use super::{ApiError, ApiState};
use crate::providers::lineworks::{self, CallbackError, Parsed, CALLBACK_BODY_LIMIT};
use crate::receipts;

pub fn router() -> Router<ApiState> {
    Router::new().route("/callbacks/lineworks", post(lineworks_callback))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn lineworks_callback(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(lw) = s.config.providers.lineworks.as_ref() else {
        return Err(ApiError::NotFound(
            "LINE WORKS is not configured on this server".into(),
        ));
    };
    // Read at most the limit: a larger body is refused before it is held in memory.
    let Ok(body) = axum::body::to_bytes(body, CALLBACK_BODY_LIMIT).await else {
        s.metrics.callback_rejected("lineworks_too_large");
        debug!(
            limit = CALLBACK_BODY_LIMIT,
            "LINE WORKS callback over the body limit"
        );
        return Err(ApiError::TooLarge(format!(
            "a LINE WORKS callback body is at most {CALLBACK_BODY_LIMIT} bytes"
        )));
    };
    let refuse = |e: CallbackError| {
        s.metrics
            .callback_rejected(&format!("lineworks_{}", e.label()));
        debug!(reason = %e, "LINE WORKS callback refused");
        e
    };
    if let Err(e) = lineworks::verify(
        &lw.bot_id,
        lw.bot_secret.expose(),
        header(&headers, "x-works-botid"),
        header(&headers, "x-works-signature"),
        &body,
    ) {
        let e = refuse(e);
        return Err(ApiError::Unauthorized(match e {
            CallbackError::WrongBot => "X-WORKS-BotId is not this server's bot",
            _ => "X-WORKS-Signature does not match the body",
        }));
    }
    let clock = s.hq.clock().clone();
    let event = lineworks::parse_callback(&body, clock.now())
        .map_err(|e| ApiError::BadRequest(refuse(e).to_string()))?;
    let event = match event {
        Parsed::Event(e) => e,
        Parsed::Ignored { kind, from, why } => {
            info!(
                kind = %kind,
                from = from.as_deref().unwrap_or("?"),
                reason = %why,
                "LINE WORKS callback not recorded"
            );
            return Ok((
                StatusCode::OK,
                Json(json!({"ignored": true, "reason": why})),
            ));
        }
    };
    let summary = receipts::apply(
        s.hq.store(),
        &clock,
        "lineworks",
        std::slice::from_ref(&event),
    )
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    s.metrics.events_applied(summary.logged);
    Ok((
        StatusCode::OK,
        Json(json!({"logged": summary.logged, "answered": summary.answered})),
    ))
}
