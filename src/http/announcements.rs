//! `POST /api/announcements`: HQ posts an instruction to all staff through the chat provider.
//! It becomes a roll call of a generated scenario (see [`crate::announcement`]), so it is
//! dispatched, read-tracked and listed like any roll call.
//!
//! Invariant: only HQ may announce; an Idempotency-Key makes a double click post once.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, Role};

pub fn router() -> Router<ApiState> {
    Router::new().route("/announcements", post(announce))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnouncementBody {
    /// The instruction, Japanese first: what happened and what to do.
    text_ja: String,
    text_en: Option<String>,
    drill: Option<bool>,
}

async fn announce(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<AnnouncementBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let Json(b) = body?;
    let key = super::idempotency_key(&headers)?.map(|k| format!("announcement:{k}"));
    let drill = b.drill.unwrap_or(false);
    let scenario = crate::announcement::scenario(
        &b.text_ja,
        b.text_en.as_deref(),
        drill,
        s.config.api.announcement_deadline,
    )
    .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let (rc, est) = s.hq.start(&scenario, Some(drill), key).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"roll_call": rc, "estimate": est})),
    )
        .into_response())
}
