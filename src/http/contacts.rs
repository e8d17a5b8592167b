//! `/api/contacts`: HQ replaces the stored contacts with a validated list (the CLI parses and
//! checks the file first; the server checks every field again on the way in).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::put;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, ApiState, Role};
use crate::contacts::Contact;

pub fn router() -> Router<ApiState> {
    Router::new().route("/contacts", put(replace).get(count))
}

async fn replace(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<Vec<Contact>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let Json(contacts) = body?;
    if contacts.is_empty() {
        return Err(ApiError::Unprocessable(
            "the contacts list is empty; refusing to delete everyone".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for c in &contacts {
        if !seen.insert(c.id.clone()) {
            return Err(ApiError::Unprocessable(format!("duplicate id {}", c.id)));
        }
    }
    let n = s.hq.import_contacts(&contacts).await?;
    Ok(Json(json!({ "imported": n })))
}

async fn count(State(s): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let n =
        s.hq.store()
            .contacts()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .len();
    Ok(Json(json!({ "contacts": n })))
}
