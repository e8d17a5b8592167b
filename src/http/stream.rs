//! `GET /api/rollcalls/{id}/stream`: live progress as server-sent events, for the HQ page.
//! Each `progress` event carries the roll call's status (overall, per department, per
//! shelter) and a `calls_version` that changes whenever the action list does (an urgent
//! answer, an escalation, a late read, a claim, an outcome, a note), so the page refetches
//! the list only then.
//!
//! The token may come as `?token=`: the browser's `EventSource` cannot set an Authorization
//! header. anpi logs no request URIs, so the token stays out of its logs; a reverse proxy in
//! front should not log query strings for this path either.
//!
//! Invariants: the same roles as the JSON API (caller or HQ); an event is sent only when
//! something changed; every stream ends when the server shuts down.

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, Role};
use crate::ids::RollCallId;

/// How often the store is re-read for changes that wake nobody (reads, answers, claims).
const POLL: Duration = Duration::from_millis(500);

pub fn router() -> Router<ApiState> {
    Router::new().route("/rollcalls/{id}/stream", get(stream))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    token: Option<String>,
}

async fn stream(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    match q.token.as_deref() {
        Some(t) => s.authorize_token(t.trim(), Role::Caller)?,
        None => s.authorize(&headers, Role::Caller)?,
    };
    let id = RollCallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Refuse an unknown roll call with a 404 now, rather than an endless empty stream.
    s.hq.status(id).await?;
    let events = futures::stream::unfold((s, None::<String>), move |(s, last)| async move {
        loop {
            if s.shutdown.is_cancelled() {
                return None;
            }
            let wake = s.escalated.clone();
            let escalated = wake.notified();
            let data = match snapshot(&s, id).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(roll_call = %id, error = %e, "progress stream could not read the store");
                    None
                }
            };
            if let Some(d) = data.filter(|d| last.as_ref() != Some(d)) {
                drop(escalated);
                let event = Event::default().event("progress").data(d.clone());
                return Some((Ok(event), (s, Some(d))));
            }
            tokio::select! {
                _ = s.shutdown.cancelled() => return None,
                _ = escalated => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The event's text, or `None` if the roll call has gone.
async fn snapshot(s: &ApiState, id: RollCallId) -> Result<Option<String>, crate::hq::HqError> {
    let status = match s.hq.status(id).await {
        Ok(st) => st,
        Err(crate::hq::HqError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let list = s.hq.call_list(id).await?;
    let mut h = DefaultHasher::new();
    for e in &list {
        (
            e.staff_id.as_str(),
            e.state.as_str(),
            e.outcome.map(|o| o.as_str()),
            &e.outcome_at,
            &e.claimed_by,
            &e.claimed_until,
            e.standing.as_ref().map(|a| (a.level, a.at)),
            e.latest.as_ref().map(|a| a.at),
            e.notes.len(),
        )
            .hash(&mut h);
    }
    // Answers HQ should read change the page too, without touching the action list.
    let p = &status.progress.overall;
    (p.answered_attention, p.answered, p.resent).hash(&mut h);
    Ok(Some(
        json!({
            "status": status,
            "calls_version": format!("{:x}", h.finish()),
        })
        .to_string(),
    ))
}
