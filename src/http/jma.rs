//! `/api/jma`: the JMA feed's health, the rules and the latest telegrams with their decisions
//! (HQ-only notices among them); `POST /api/jma/replay` runs telegram files through the same
//! decision path (`anpi jma replay`); `/api/rollcalls/{id}/trigger` says which telegram started
//! a roll call; `/api/rollcalls/{id}/drill-report` is a drill's report (JSON, CSV, text).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiState, Role};
use crate::ids::RollCallId;
use crate::jma::{DryState, Scope};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/jma", get(overview))
        .route("/jma/replay", post(replay))
        .route("/rollcalls/{id}/trigger", get(trigger))
        .route("/rollcalls/{id}/drill-report", get(drill_report))
}

fn engine(s: &ApiState) -> Result<&crate::jma::Engine, ApiError> {
    s.jma
        .as_deref()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the JMA engine is not wired")))
}

fn roll_call_id(raw: &str) -> Result<RollCallId, ApiError> {
    RollCallId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}

/// Feed health, the rules, and the latest telegrams with their decisions (from the feed and
/// from replays, each marked with its scope).
async fn overview(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let e = engine(&s)?;
    let rules: Vec<Value> = e
        .rules()
        .iter()
        .map(|r| {
            json!({
                "name": r.name, "family": r.family, "areas": r.areas,
                "threshold": r.threshold_label(), "scenario": r.scenario,
            })
        })
        .collect();
    let recent =
        s.hq.store()
            .jma_log(None, None, 50)
            .await
            .map_err(internal)?;
    Ok(Json(json!({
        "enabled": s.config.jma.enabled,
        "health": super::ops::jma_health(&s).await,
        "rules": rules,
        "recent": recent,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFile {
    name: String,
    xml: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    files: Vec<ReplayFile>,
    #[serde(default)]
    dry_run: bool,
}

/// Decides on each file in order. A dry run decides against a fresh state of its own and
/// starts nothing; otherwise the files go through the replay scope (starts are drills).
async fn replay(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ReplayBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let Json(b) = body?;
    if b.files.is_empty() {
        return Err(ApiError::Unprocessable("give at least one file".into()));
    }
    let e = engine(&s)?;
    let mut dry = b.dry_run.then(DryState::default);
    let mut out = Vec::new();
    for f in &b.files {
        let o = e
            .process(&f.xml, &f.name, Scope::Replay, dry.as_mut())
            .await
            .map_err(internal)?;
        out.push(o);
    }
    Ok(Json(json!({ "dry_run": b.dry_run, "results": out })))
}

/// The telegrams behind a roll call (empty when it was started by hand).
async fn trigger(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    s.hq.store()
        .roll_call(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("roll call {id} does not exist")))?;
    let telegrams =
        s.hq.store()
            .jma_log(None, Some(id), 20)
            .await
            .map_err(internal)?;
    Ok(Json(json!({ "roll_call": id, "telegrams": telegrams })))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    format: Option<String>,
}

async fn drill_report(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let id = roll_call_id(&id)?;
    let r = crate::drills::load(&s.hq, id).await?;
    let tz = s.config.zone().unwrap_or(chrono_tz::Asia::Tokyo);
    Ok(match q.format.as_deref().unwrap_or("json") {
        "json" => Json(json!(r)).into_response(),
        "csv" => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"anpi-{id}-drill-report.csv\""),
                ),
            ],
            crate::drills::render_csv(&r),
        )
            .into_response(),
        "text" => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            crate::drills::render_text(&r, tz),
        )
            .into_response(),
        other => {
            return Err(ApiError::BadRequest(format!(
                "format {other:?}: use json, csv or text"
            )))
        }
    })
}
