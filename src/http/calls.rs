//! The call queue and shelter acknowledgements: a caller claims the next person to ring
//! (`POST /api/rollcalls/{id}/calls/next`), may let go of them (`.../calls/{staff}/release`)
//! and records the outcome at `.../calls/{staff}` (in `rollcalls`); a shelter phone's token
//! acknowledges for that phone (`POST /api/rollcalls/{id}/ack`).
//!
//! Invariants: nobody is held by two callers at once (the store's claim is one statement); a
//! hold lapses after `api.call_hold`; a shelter token speaks only for its own phone.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiState, Principal, Role};
use crate::ids::{RollCallId, StaffId};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/rollcalls/{id}/calls/next", post(next))
        .route("/rollcalls/{id}/calls/{staff}/release", post(release))
        .route("/rollcalls/{id}/ack", post(ack))
}

fn roll_call_id(raw: &str) -> Result<RollCallId, ApiError> {
    RollCallId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Optional body of a claim or release: several tablets may share one caller token, each
/// naming its desk so each gets its own person.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeskBody {
    pub(super) desk: Option<String>,
}

impl DeskBody {
    /// Reads an empty body as "no desk"; anything else must be the JSON object.
    pub(super) fn parse(body: &Bytes) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::BadRequest(format!("the body is not JSON: {e}"))
            } else {
                ApiError::Unprocessable(format!("expected {{\"desk\": \"tablet-1\"}}: {e}"))
            }
        })
    }

    /// Who is calling, as recorded: the token's name, and the desk if one was given.
    pub(super) fn caller(&self, who: &Principal) -> Result<String, ApiError> {
        match self.desk.as_deref().map(str::trim) {
            None | Some("") => Ok(who.name.clone()),
            Some(d)
                if d.chars().count() <= 32
                    && d.chars()
                        .all(|c| c.is_alphanumeric() || c == '-' || c == '_') =>
            {
                Ok(format!("{}/{d}", who.name))
            }
            Some(d) => Err(ApiError::Unprocessable(format!(
                "desk {d:?}: use up to 32 letters, digits, '-' or '_'"
            ))),
        }
    }
}

async fn next(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    let caller = DeskBody::parse(&body)?.caller(&who)?;
    let entry =
        s.hq.claim_next_call(id, &caller, s.config.api.call_hold)
            .await?;
    let minutes = entry
        .as_ref()
        .map(|e| crate::escalation::minutes_waiting(e, s.hq.clock().now_millis()));
    Ok(Json(json!({
        "roll_call": id,
        "caller": caller,
        "entry": entry,
        "minutes_waiting": minutes,
    })))
}

async fn release(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((id, staff)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    let staff = StaffId::parse(&staff).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let caller = DeskBody::parse(&body)?.caller(&who)?;
    let released = s.hq.release_call(id, &staff, &caller).await?;
    Ok(Json(
        json!({"roll_call": id, "staff_id": staff, "released": released}),
    ))
}

async fn ack(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Shelter)?;
    let id = roll_call_id(&id)?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        // Nothing to say beyond "we got it"; a body is a client mistake worth reporting.
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
        if v.as_object().is_none_or(|o| !o.is_empty()) {
            return Err(ApiError::Unprocessable(
                "an acknowledgement takes no fields: send an empty body or {}".into(),
            ));
        }
    }
    let phone = who.shelter_phone.ok_or(ApiError::Forbidden(
        "this token is not bound to a shelter phone",
    ))?;
    s.hq.acknowledge(id, &phone).await?;
    Ok(Json(
        json!({"roll_call": id, "staff_id": phone, "answer": "ack"}),
    ))
}
