//! The call queue, people, late answers and shelter phones: a caller claims the next person
//! to ring (`POST /api/rollcalls/{id}/calls/next`), may let go of them
//! (`.../calls/{staff}/release`) and records the outcome and notes at `.../calls/{staff}` (in
//! `rollcalls`); finds anyone by name, kana, id or phone (`GET .../people?q=`) and reads one
//! (`GET .../people/{staff}`); works urgent answers that came after their roll call closed
//! (`/api/late-answers`). A shelter phone's token reads its open roll calls
//! (`GET /api/shelter`) and answers for that phone (`POST /api/rollcalls/{id}/ack`). Every
//! token can ask who it is (`GET /api/whoami`), so a page shows only what it may do.
//!
//! Invariants: nobody is held by two callers at once (the store's claim is one statement); a
//! hold lapses after `api.call_hold`; a shelter token speaks only for its own phone.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiState, Principal, Role};
use crate::ids::{RollCallId, StaffId};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/rollcalls/{id}/calls/next", post(next))
        .route("/rollcalls/{id}/calls/{staff}/release", post(release))
        .route("/rollcalls/{id}/people", get(people))
        .route("/rollcalls/{id}/people/{staff}", get(person))
        .route("/late-answers", get(late_answers))
        .route("/late-answers/{id}/close", post(close_late))
        .route("/rollcalls/{id}/ack", post(ack))
        .route("/shelter", get(shelter))
}

/// Who this token is: its role and name (and, for a shelter token, its phone).
async fn whoami(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Shelter).or_else(|e| match e {
        ApiError::Forbidden(_) => s.authorize(&headers, Role::Caller),
        e => Err(e),
    })?;
    let role = match who.role {
        Role::Hq => "hq",
        Role::Caller => "caller",
        Role::Shelter => "shelter",
    };
    Ok(Json(json!({
        "role": role,
        "name": who.name,
        "shelter_phone": who.shelter_phone,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeopleQuery {
    q: String,
}

/// Recipients matching `q` (name, ふりがな, staff id or phone), for a caller whose person
/// phoned in.
async fn people(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PeopleQuery>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    if q.q.chars().count() > 100 {
        return Err(ApiError::BadRequest(
            "the search is longer than 100 characters".into(),
        ));
    }
    let found = s.hq.search(id, &q.q, 50).await?;
    Ok(Json(json!({"roll_call": id, "people": found})))
}

/// One recipient's entry, whether or not they are on the action list.
async fn person(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((id, staff)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    let staff = StaffId::parse(&staff).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let e = s.hq.entry(id, &staff).await?;
    let now = s.hq.clock().now_millis();
    Ok(Json(json!({
        "roll_call": id,
        "action": e.action(),
        "to_call": e.to_call(),
        "minutes_waiting": crate::calllist::minutes_waiting(&e, now),
        "entry": e,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LateQuery {
    scope: Option<String>,
}

/// Urgent answers that came after their roll call closed, while none of the person's roll
/// calls was open: open ones by default, `?scope=all` for the record.
async fn late_answers(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<LateQuery>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let open_only = match q.scope.as_deref() {
        None | Some("open") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "scope {:?}: use open or all",
                super::short(other)
            )))
        }
    };
    let entries = s.hq.late_answers(open_only).await?;
    Ok(Json(json!({"entries": entries})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseLate {
    note: String,
    desk: Option<String>,
}

async fn close_late(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<CloseLate>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Caller)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest("a late answer's id is a number".into()))?;
    let Json(b) = body?;
    let by = DeskBody { desk: b.desk }.caller(&who)?;
    s.hq.close_late_answer(id, &by, &b.note).await?;
    Ok(Json(json!({"id": id, "closed": true, "by": by})))
}

/// A shelter phone's own page: the open roll calls it is in, with its answers.
async fn shelter(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Shelter)?;
    let phone = who.shelter_phone.ok_or(ApiError::Forbidden(
        "this token is not bound to a shelter phone",
    ))?;
    let open = s.hq.shelter_view(&phone).await?;
    Ok(Json(json!({"staff_id": phone, "roll_calls": open})))
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
                    && d.chars().all(|c| c.is_alphanumeric() || DESK_MARKS.contains(c)) =>
            {
                Ok(format!("{}/{d}", who.name))
            }
            Some(d) => Err(ApiError::Unprocessable(format!(
                "端末名 {:?} は使えません: 32文字までの文字・数字と「{DESK_MARKS}」で入力してください \
                 / desk {:?}: use up to 32 letters, digits and \"{DESK_MARKS}\"",
                super::short(d),
                super::short(d)
            ))),
        }
    }
}

/// Marks a desk name may hold besides letters and digits ("受付・2（本庁）").
const DESK_MARKS: &str = " 　-_・()（）#＃.";

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    /// One of the roll call's shelter answers; none means its first "ok" one.
    value: Option<String>,
}

async fn ack(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Shelter)?;
    let id = roll_call_id(&id)?;
    // A shelter token speaks for its own phone only: the body names an answer, never a phone.
    let body: AckBody = if body.iter().all(u8::is_ascii_whitespace) {
        AckBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                ApiError::BadRequest(format!("the body is not JSON: {e}"))
            } else {
                ApiError::Unprocessable(format!(
                    "an acknowledgement takes only {{\"value\": \"...\"}} (one of the \
                     shelter's answers) or an empty body: {e}"
                ))
            }
        })?
    };
    let phone = who.shelter_phone.ok_or(ApiError::Forbidden(
        "this token is not bound to a shelter phone",
    ))?;
    let entry = s.hq.acknowledge(id, &phone, body.value.as_deref()).await?;
    Ok(Json(json!({
        "roll_call": id,
        "staff_id": phone,
        "answer": entry.latest.as_ref().or(entry.standing.as_ref()),
        "entry": entry,
    })))
}
