//! `/api/rollcalls`: start (with an Idempotency-Key so a double click starts one roll call),
//! list, status, close, HQ's action list (JSON, CSV, table: urgent answers, silent shelters,
//! never read, not sent), the answers HQ should read, call outcomes and notes, and the event
//! log; `/api/scenarios` and `/api/estimate` for what HQ sees before starting.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiState, Role};
use crate::answers::AnswerLevel;
use crate::calllist::{render_csv, render_table, ListScope};
use crate::ids::{RollCallId, StaffId};
use crate::rollcall::{Action, CallOutcome};
use crate::scenario::Scenario;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/scenarios", get(scenarios))
        .route("/estimate", post(estimate))
        .route("/rollcalls", post(start).get(list))
        .route("/rollcalls/{id}", get(status))
        .route("/rollcalls/{id}/close", post(close))
        .route("/rollcalls/{id}/plan", get(plan))
        .route("/rollcalls/{id}/escalations", get(escalations))
        .route("/rollcalls/{id}/answers", get(answers))
        .route("/rollcalls/{id}/events", get(events))
        .route("/rollcalls/{id}/calls/{staff}", post(call))
}

fn roll_call_id(raw: &str) -> Result<RollCallId, ApiError> {
    RollCallId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Which scenario to use: a name from the scenarios folder, or a whole scenario file's text.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioRef {
    scenario: Option<String>,
    /// The text of a scenario file, checked like one (`origin` names it in errors).
    scenario_toml: Option<String>,
    origin: Option<String>,
    drill: Option<bool>,
}

impl ScenarioRef {
    fn resolve(&self, s: &ApiState) -> Result<Scenario, ApiError> {
        match (&self.scenario_toml, &self.scenario) {
            (Some(text), _) => {
                let origin = self.origin.as_deref().unwrap_or("scenario");
                Scenario::parse(text, origin).map_err(|e| ApiError::Unprocessable(e.public()))
            }
            (None, Some(name)) => {
                if name.contains('/') || name.contains('\\') || name.contains("..") {
                    return Err(ApiError::BadRequest(format!(
                        "scenario {:?}: give a scenario name, not a path",
                        super::clip(name, 64)
                    )));
                }
                Scenario::find(&s.config.scenarios.dir, name).map_err(|e| match e {
                    crate::scenario::ScenarioError::NotFound { .. } => {
                        ApiError::NotFound(e.public())
                    }
                    other => ApiError::Unprocessable(other.public()),
                })
            }
            (None, None) => Err(ApiError::Unprocessable(
                "say which scenario: {\"scenario\": \"earthquake\"}".into(),
            )),
        }
    }
}

async fn scenarios(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    // A broken file is listed as broken, with its error; the others stay usable.
    let each = Scenario::load_dir_each(&s.config.scenarios.dir).map_err(|e| {
        tracing::warn!(error = %e, "the scenarios folder could not be read");
        ApiError::Unprocessable("the scenarios folder could not be read (see anpi's log)".into())
    })?;
    let mut list: Vec<Value> = Vec::new();
    for (file, loaded) in &each {
        match loaded {
            Ok(sc) => list.push(
                json!({"name": sc.name, "title": sc.title, "drill": sc.drill,
                       "deadline_seconds": sc.deadline.as_secs()}),
            ),
            Err(e) => list.push(json!({"file": file, "broken": true, "error": e.public()})),
        }
    }
    // Usable ones first, by name; broken ones after, by file.
    list.sort_by_key(|v| {
        (
            v["broken"].as_bool().unwrap_or(false),
            v["name"]
                .as_str()
                .or(v["file"].as_str())
                .unwrap_or("")
                .to_string(),
        )
    });
    Ok(Json(json!(list)))
}

async fn estimate(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ScenarioRef>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let Json(r) = body?;
    let scenario = r.resolve(&s)?;
    let est = s.hq.estimate(&scenario).await?;
    // What a confirmation before a real start shows: the text exactly as staff will get it.
    let drill = scenario.drill || r.drill == Some(true);
    Ok(Json(json!({
        "scenario": scenario.name,
        "estimate": est,
        "title": scenario.title,
        "drill": drill,
        "message": scenario.message_text(drill),
    })))
}

async fn start(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ScenarioRef>, JsonRejection>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let Json(r) = body?;
    let key = super::idempotency_key(&headers)?;
    let scenario = r.resolve(&s)?;
    let (rc, est) = s.hq.start(&scenario, r.drill, key).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"roll_call": rc, "estimate": est})),
    )
        .into_response())
}

async fn list(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    Ok(Json(json!(s.hq.list().await?)))
}

async fn status(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let st = s.hq.status(roll_call_id(&id)?).await?;
    Ok(Json(json!(st)))
}

async fn close(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let id = roll_call_id(&id)?;
    let changed = s.hq.close(id).await?;
    Ok(Json(
        json!({"roll_call": id, "closed": true, "was_open": changed}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    format: Option<String>,
    scope: Option<String>,
}

async fn escalations(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    let scope = match q.scope.as_deref() {
        None | Some("to_call") => ListScope::ToCall,
        Some("all") => ListScope::All,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "scope {other:?}: use to_call or all"
            )))
        }
    };
    let entries = s.hq.call_list(id).await?;
    let now = s.hq.clock().now_millis();
    let tz = s.config.zone().map_err(|e| ApiError::Internal(e.into()))?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => {
            let mut counts = serde_json::Map::new();
            for a in [
                Action::Urgent,
                Action::SilentShelter,
                Action::NeverRead,
                Action::NotSent,
            ] {
                let n = entries.iter().filter(|e| e.action() == Some(a)).count();
                counts.insert(a.as_str().into(), n.into());
            }
            let selected: Vec<_> = entries
                .into_iter()
                .filter(|e| scope == ListScope::All || e.to_call())
                .map(|e| {
                    let minutes = crate::calllist::minutes_waiting(&e, now);
                    json!({
                        "action": e.action(),
                        "to_call": e.to_call(),
                        "minutes_waiting": minutes,
                        "entry": e,
                    })
                })
                .collect();
            Ok(Json(json!({
                "roll_call": id,
                "as_of": now,
                "counts": counts,
                "entries": selected,
            }))
            .into_response())
        }
        "csv" => Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"anpi-{id}-call-list.csv\""),
                ),
            ],
            render_csv(&entries, scope, now, tz),
        )
            .into_response()),
        "table" => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            render_table(&entries, scope, now, tz),
        )
            .into_response()),
        other => Err(ApiError::BadRequest(format!(
            "format {:?}: use json, csv or table",
            super::short(other)
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswersQuery {
    level: Option<String>,
}

/// Everyone whose standing answer has the given level (`attention` by default: 出動不可 and
/// free text HQ should read, verbatim), newest first.
async fn answers(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<AnswersQuery>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    let level: AnswerLevel = q
        .level
        .as_deref()
        .unwrap_or("attention")
        .parse()
        .map_err(|e: String| ApiError::BadRequest(format!("level: {}", super::short(&e))))?;
    let entries = s.hq.answered(id, level).await?;
    Ok(Json(
        json!({"roll_call": id, "level": level, "entries": entries}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    /// What the call found; may be left out when only a note is written.
    outcome: Option<String>,
    /// Where the person is, what they need, what was done. Needed to close an urgent answer.
    note: Option<String>,
    /// The desk that made the call, when tablets share a token (see `calls`).
    desk: Option<String>,
}

async fn call(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((id, staff)): Path<(String, String)>,
    body: Result<Json<CallBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    let staff = StaffId::parse(&staff).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Json(b) = body?;
    let outcome = b
        .outcome
        .as_deref()
        .map(CallOutcome::parse)
        .transpose()
        .map_err(|e| ApiError::Unprocessable(super::short(&e)))?;
    let by = super::calls::DeskBody { desk: b.desk }.caller(&who)?;
    let entry =
        s.hq.record_call(id, &staff, outcome, b.note.as_deref(), &by)
            .await?;
    Ok(Json(json!({
        "action": entry.action(),
        "to_call": entry.to_call(),
        "entry": entry,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    limit: Option<usize>,
}

async fn events(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let id = roll_call_id(&id)?;
    let ev =
        s.hq.store()
            .events(id, q.limit.unwrap_or(1000).min(100_000))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(json!({"roll_call": id, "events": ev})))
}

/// The roll call's dispatch plan and how long the rest will take (HQ during dispatch).
async fn plan(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let st = s.hq.plan_status(roll_call_id(&id)?).await?;
    Ok(Json(json!(st)))
}
