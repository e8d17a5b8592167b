//! `GET /api/health`: the provider trouble HQ should know of now (degraded since when, why,
//! what it means), for the HQ page's banner and `anpi rollcall status`. Any HQ or caller token
//! may read it.
//!
//! Invariant: it shows components and reasons, never a person's data.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, ApiState, Role};

pub fn router() -> Router<ApiState> {
    Router::new().route("/health", get(health))
}

async fn health(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Caller)?;
    let degraded = s.health.degraded();
    let zone = s.config.zone().unwrap_or(chrono_tz::Asia::Tokyo);
    let list: Vec<Value> = degraded
        .iter()
        .map(|d| {
            json!({
                "component": d.component,
                "since": d.since,
                "since_local": crate::clock::from_millis(d.since)
                    .with_timezone(&zone)
                    .format("%m/%d %H:%M:%S")
                    .to_string(),
                "reason": d.reason,
                "label": d.label,
            })
        })
        .collect();
    Ok(Json(json!({
        "status": if list.is_empty() { "ok" } else { "degraded" },
        "degraded": list,
    })))
}
