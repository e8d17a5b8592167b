//! `/api/contacts`: HQ replaces the stored contacts with a validated list (the CLI parses and
//! checks the file first; the server checks every field again on the way in).

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::put;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, ApiState, Role};
use crate::contacts::{Contact, Directory};

pub fn router() -> Router<ApiState> {
    Router::new().route("/contacts", put(replace).get(count))
}

async fn replace(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<Vec<Contact>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Role::Hq)?;
    let Json(mut contacts) = body?;
    // Ids as a person typed them, folded as the contacts files fold them, so a client other
    // than the CLI that sends `１００１` stores the `1001` that typed lookups look for.
    for c in &mut contacts {
        c.id = crate::ids::StaffId::typed(c.id.as_str())
            .map_err(|e| ApiError::Unprocessable(format!("contact {:?}: {e}", c.id.as_str())))?;
    }
    if contacts.is_empty() {
        return Err(ApiError::Unprocessable(
            "the contacts list is empty; refusing to delete everyone".into(),
        ));
    }
    // The same rules as a file (control characters, priorities, reachability, unique ids):
    // what the API stores, every backend can store and every list can print.
    let directory = Directory { contacts };
    if let Err(e) = directory.validate("contacts") {
        const SHOWN: usize = 20;
        let problems = e.problems();
        let mut message: Vec<String> = problems
            .iter()
            .take(SHOWN)
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        if problems.len() > SHOWN {
            message.push(format!("and {} more", problems.len() - SHOWN));
        }
        return Err(ApiError::Unprocessable(message.join("\n")));
    }
    let n = s.hq.import_contacts(&directory.contacts).await?;
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
