//! The simulator's HTTP surface: `POST /v1/messages` and `GET /v1/events`, both behind the
//! bearer token. Handlers only translate between HTTP and [`super::state::State`].
//!
//! Invariant: a request is authenticated before anything about it is parsed or counted, and
//! the state lock is never held across an await.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::state::{SendBody, SendOutcome, WireEvent};
use super::Shared;

/// Longest a poll waits for events, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How often a waiting poll looks again: clock time may move without the server noticing.
const RECHECK: Duration = Duration::from_millis(20);
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 5000;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/messages", post(send_message))
        .route("/v1/events", get(events))
        .route("/v1/stats", get(stats))
        .with_state(shared)
}

/// The counters, for a benchmark or test that runs the simulator in another process.
async fn stats(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorised(&shared, &headers) {
        return unauthorised();
    }
    let s = shared.lock().stats();
    Json(s).into_response()
}

fn json(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.into(),
    )
        .into_response()
}

fn authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == shared.expected_auth.as_slice())
}

fn unauthorised() -> Response {
    let mut r = json(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// 400 for JSON that does not parse, 422 for JSON of the wrong shape.
fn refused_body(e: serde_json::Error) -> Response {
    let (status, code) = match e.classify() {
        serde_json::error::Category::Data => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        _ => (StatusCode::BAD_REQUEST, "malformed_json"),
    };
    let body = serde_json::json!({ "error": code, "detail": e.to_string() });
    json(status, body.to_string())
}

async fn send_message(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorised(&shared, &headers) {
        return unauthorised();
    }
    let body: SendBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refused_body(e),
    };
    let decision = {
        let mut state = shared.lock();
        // Read the clock under the lock so that accepted sends enter the window in order.
        let now = shared.clock.now();
        state.send(body, now)
    };
    if decision.wake_pollers {
        shared.new_events.notify_waiters();
    }
    if let Some(delay) = decision.slow {
        tokio::time::sleep(delay).await;
    }
    match decision.outcome {
        SendOutcome::Accepted { message_no } => json(
            StatusCode::CREATED,
            format!(r#"{{"message_id":"m-{message_no}"}}"#),
        ),
        SendOutcome::RateLimited {
            retry_after_secs, ..
        } => with_retry_after(
            json(StatusCode::TOO_MANY_REQUESTS, r#"{"error":"rate_limited"}"#),
            retry_after_secs,
        ),
        SendOutcome::Unavailable { retry_after } => {
            let r = json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"unavailable"}"#,
            );
            if retry_after {
                with_retry_after(r, 1)
            } else {
                r
            }
        }
        SendOutcome::UnknownUser => json(StatusCode::NOT_FOUND, r#"{"error":"unknown_user"}"#),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct EventsPage {
    events: Vec<WireEvent>,
    /// The `seq` to pass as `after` next time.
    next: String,
    /// Which feed this is (new at every server start).
    feed: String,
    /// The newest `seq` in this feed: an `after` beyond it belongs to another feed.
    last: u64,
}

async fn events(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    if !authorised(&shared, &headers) {
        return unauthorised();
    }
    let q = match Query::<EventsQuery>::try_from_uri(&uri) {
        Ok(Query(q)) => q,
        Err(e) => {
            let body = serde_json::json!({ "error": "bad_query", "detail": e.body_text() });
            return json(StatusCode::BAD_REQUEST, body.to_string());
        }
    };
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;

    let (mut events, last) = loop {
        // Registered before looking, so a wake-up between the look and the wait is not lost.
        let woken = shared.new_events.notified();
        let (events, last) = {
            let mut state = shared.lock();
            let now = shared.clock.now();
            let events = state.poll(now, after, limit);
            (events, state.last_seq())
        };
        let now = Instant::now();
        // A cursor from another feed waits for nothing: the client must start over.
        if !events.is_empty() || now >= deadline || after > last {
            break (events, last);
        }
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(RECHECK.min(deadline - now)) => {}
        }
    };
    let next = events.last().map_or(after, |e| e.seq).to_string();
    for e in &mut events {
        e.event_id = format!("e-{}-{}", shared.feed, e.seq);
    }
    Json(EventsPage {
        events,
        next,
        feed: shared.feed.clone(),
        last,
    })
    .into_response()
}
