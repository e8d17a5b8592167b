//! The adapter for anpi's built-in chat simulator ([`crate::simulator`]): sends over
//! `POST /v1/messages`, events by long-polling `GET /v1/events`.
//!
//! Invariants: every HTTP outcome is classified here, once, into [`Sent`] or a
//! [`ProviderError`]; a send the server accepted (2xx) is never reported as failed, whatever
//! its body looks like, because retrying it would message the person twice. The cursor names
//! the feed it belongs to (`<feed>:<seq>`), so when the simulator restarts (a new feed, its
//! `seq` back at 1) the new feed is read from its beginning instead of waiting forever past
//! the old cursor.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use super::http::{self, Platform};
use super::{
    Capabilities, ChatProvider, EventBatch, InboundEvent, InboundKind, OutboundMessage,
    ProviderError, RateLimit, Sent,
};
use crate::ids::{ChatHandle, RollCallId};

/// Events asked for per poll.
const EVENTS_PAGE: usize = 1000;

/// Per-request budget for a send; a poll gets this on top of its wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The simulator as reasons name it; a 429 without a `Retry-After` lasts a second.
const SIMULATOR: Platform = Platform {
    name: "simulator",
    the: "the simulator",
    reset_header: None,
    default_reset: Duration::from_secs(1),
};

/// A client for the simulator's HTTP API.
pub struct SimulatorProvider {
    client: reqwest::Client,
    base_url: String,
    messages_url: String,
    events_url: String,
    auth: HeaderValue,
    rate_limit: Option<RateLimit>,
    max_in_flight: usize,
}

impl fmt::Debug for SimulatorProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorProvider")
            .field("base_url", &self.base_url)
            .field("token", &"[redacted]")
            .field("rate_limit", &self.rate_limit)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl SimulatorProvider {
    /// One HTTP client for the provider's whole life, with a keep-alive pool big enough for
    /// every send in flight, so the hot path never opens a connection.
    pub fn new(
        base_url: String,
        token: String,
        rate_limit: Option<RateLimit>,
        max_in_flight: usize,
    ) -> Self {
        let max_in_flight = max_in_flight.max(1);
        let client = http::client(max_in_flight, REQUEST_TIMEOUT);
        let base = base_url.trim_end_matches('/').to_string();
        // A token that is not a valid header value is sent as nothing, which the simulator
        // refuses with 401: the same answer a wrong token gets.
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        auth.set_sensitive(true);
        Self {
            client,
            messages_url: format!("{base}/v1/messages"),
            events_url: format!("{base}/v1/events"),
            base_url: base,
            auth,
            rate_limit,
            max_in_flight,
        }
    }
}

#[derive(Deserialize)]
struct SentBody {
    message_id: Option<String>,
}

#[derive(Deserialize)]
struct EventsPage {
    /// Kept raw so that one event this adapter cannot read does not block the feed.
    events: Vec<serde_json::Value>,
    next: String,
    /// The feed's id; empty from a simulator that does not say.
    #[serde(default)]
    feed: String,
    /// The newest `seq` in the feed, when the simulator says.
    #[serde(default)]
    last: Option<u64>,
}

/// `<feed>:<seq>`, or a bare `<seq>` stored before feeds had ids.
fn parse_cursor(c: &str) -> Result<(Option<&str>, u64), ProviderError> {
    let (feed, seq) = match c.trim().split_once(':') {
        Some((f, s)) => (Some(f), s),
        None => (None, c.trim()),
    };
    let seq = seq
        .parse()
        .map_err(|_| ProviderError::Permanent(format!("{c:?} is not a simulator event cursor")))?;
    Ok((feed, seq))
}

#[derive(Deserialize)]
struct WireEvent {
    event_id: String,
    roll_call_id: Option<RollCallId>,
    from: ChatHandle,
    kind: InboundKind,
    occurred_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Classifies an answer that is not a success.
async fn refusal(resp: Response) -> ProviderError {
    let status = resp.status();
    if let Some(e) = SIMULATOR.temporary(status, resp.headers()) {
        return e;
    }
    if status == StatusCode::UNAUTHORIZED {
        return ProviderError::Permanent("simulator refused the token".into());
    }
    let body = resp.text().await.unwrap_or_default();
    if status == StatusCode::NOT_FOUND
        && serde_json::from_str::<ErrorBody>(&body).is_ok_and(|b| b.error == "unknown_user")
    {
        return ProviderError::Permanent("unknown user on the chat platform".into());
    }
    SIMULATOR.refused(status, &body)
}

#[async_trait]
impl ChatProvider for SimulatorProvider {
    fn name(&self) -> &str {
        "simulator"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_receipts: true,
            buttons: true,
            idempotent_sends: false,
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "simulator.send",
        skip_all,
        fields(roll_call = %msg.roll_call_id, delivery = msg.delivery_id)
    )]
    async fn send(&self, msg: &OutboundMessage) -> Result<Sent, ProviderError> {
        let route = crate::scenario::RouteTraits::direct(&self.capabilities());
        let wire = serde_json::json!({
            "delivery_id": msg.delivery_id,
            "roll_call_id": msg.roll_call_id,
            "to": msg.to,
            "text": msg.asks.compose(&msg.text, route, &msg.buttons),
            "buttons": msg.buttons,
            "resend": msg.resend,
        });
        let resp = self
            .client
            .post(&self.messages_url)
            .header(AUTHORIZATION, self.auth.clone())
            .json(&wire)
            .send()
            .await
            .map_err(|e| SIMULATOR.transport_error(e))?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        // Accepted: an unreadable body costs only the message id.
        let message_id = match resp.bytes().await {
            Ok(b) => serde_json::from_slice::<SentBody>(&b)
                .ok()
                .and_then(|s| s.message_id),
            Err(_) => None,
        };
        Ok(Sent { message_id })
    }

    /// A full page may have more behind it; anything less is all the simulator held.
    fn feed_complete_to(
        &self,
        events: usize,
        asked_at: crate::clock::Millis,
        answered_at: crate::clock::Millis,
    ) -> Option<crate::clock::Millis> {
        match events {
            0 => Some(answered_at),
            n if n < EVENTS_PAGE => Some(asked_at),
            _ => None,
        }
    }

    #[tracing::instrument(level = "debug", name = "simulator.poll", skip(self))]
    async fn poll_events(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<EventBatch, ProviderError> {
        let (feed, after) = match cursor {
            None => (None, 0),
            Some(c) => parse_cursor(c)?,
        };
        let mut page = self.events_page(after, wait).await?;
        let other_feed = feed.is_some_and(|f| !page.feed.is_empty() && f != page.feed);
        let past_the_end = page.last.is_some_and(|last| after > last);
        if after > 0 && (other_feed || past_the_end) {
            tracing::warn!(
                stored = cursor.unwrap_or_default(),
                feed = %page.feed,
                newest = ?page.last,
                "the simulator's event feed started again (the simulator restarted); \
                 reading the new feed from its beginning"
            );
            page = self.events_page(0, Duration::ZERO).await?;
        }
        let mut events = Vec::with_capacity(page.events.len());
        for raw in page.events {
            match serde_json::from_value::<WireEvent>(raw) {
                Ok(e) => events.push(InboundEvent {
                    event_id: e.event_id,
                    roll_call_id: e.roll_call_id,
                    from: e.from,
                    kind: e.kind,
                    occurred_at: e.occurred_at,
                }),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable simulator event"),
            }
        }
        let cursor = if page.feed.is_empty() {
            page.next
        } else {
            format!("{}:{}", page.feed, page.next)
        };
        Ok(EventBatch {
            events,
            cursor: Some(cursor),
        })
    }
}

impl SimulatorProvider {
    /// One `GET /v1/events` page after `after`, waiting up to `wait` for events.
    async fn events_page(&self, after: u64, wait: Duration) -> Result<EventsPage, ProviderError> {
        let wait_ms = wait.as_millis().min(u64::MAX as u128) as u64;
        let resp = self
            .client
            .get(&self.events_url)
            .query(&[
                ("after", after),
                ("wait_ms", wait_ms),
                ("limit", EVENTS_PAGE as u64),
            ])
            .header(AUTHORIZATION, self.auth.clone())
            .timeout(REQUEST_TIMEOUT + wait)
            .send()
            .await
            .map_err(|e| SIMULATOR.transport_error(e))?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        SIMULATOR.read_json(resp, "events page").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode as S;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::Router;

    use crate::providers::AnswerButton;

    fn message() -> OutboundMessage {
        OutboundMessage {
            asks: Default::default(),
            delivery_id: 1,
            roll_call_id: RollCallId(7),
            to: ChatHandle::parse("sim-S00001").unwrap(),
            text: "安否確認です".into(),
            buttons: vec![AnswerButton {
                label: "無事".into(),
                value: "safe".into(),
            }],
            resend: false,
        }
    }

    /// Serves `app` on loopback and returns a provider pointed at it.
    async fn provider_for(app: Router) -> SimulatorProvider {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        SimulatorProvider::new(url, "t".into(), None, 4)
    }

    #[tokio::test]
    async fn accepted_send_with_a_strange_body_is_still_sent() {
        let app = Router::new().route("/v1/messages", post(|| async { (S::CREATED, "<html>") }));
        let p = provider_for(app).await;
        assert_eq!(p.send(&message()).await, Ok(Sent { message_id: None }));
    }

    #[tokio::test]
    async fn status_codes_are_classified_once() {
        let app = Router::new()
            .route(
                "/v1/messages",
                post(|| async { (S::SERVICE_UNAVAILABLE, [("retry-after", "3")], "x") }),
            )
            .route(
                "/v1/events",
                get(|| async { (S::BAD_REQUEST, "after must be a number").into_response() }),
            );
        let p = provider_for(app).await;
        assert_eq!(
            p.send(&message()).await,
            Err(ProviderError::Retryable {
                after: Some(Duration::from_secs(3)),
                reason: "simulator answered 503 Service Unavailable".into()
            })
        );
        match p.poll_events(None, Duration::ZERO).await {
            Err(ProviderError::Permanent(r)) => {
                assert!(r.contains("400") && r.contains("after must be"), "{r}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_404_that_is_not_unknown_user_names_the_status() {
        // A wrong base URL: the route does not exist.
        let p = provider_for(Router::new()).await;
        match p.send(&message()).await {
            Err(ProviderError::Permanent(r)) => {
                assert!(r.contains("404"), "{r}");
                assert!(!r.contains("unknown user"), "{r}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn unreadable_events_page_is_retryable_and_bad_events_are_skipped() {
        let app = Router::new().route(
            "/v1/events",
            get(|| async {
                r#"{"events":[{"seq":1,"event_id":"e-1","roll_call_id":7,"from":"sim-a","kind":{"type":"wink"},"occurred_at":"2026-01-01T00:00:00Z"},{"seq":2,"event_id":"e-2","roll_call_id":7,"from":"sim-a","kind":{"type":"read"},"occurred_at":"2026-01-01T00:00:00Z"}],"next":"2"}"#
            }),
        );
        let p = provider_for(app).await;
        let batch = p.poll_events(Some("0"), Duration::ZERO).await.unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].event_id, "e-2");
        assert_eq!(batch.cursor.as_deref(), Some("2"));

        let p = provider_for(Router::new().route("/v1/events", get(|| async { "{" }))).await;
        assert!(matches!(
            p.poll_events(None, Duration::ZERO).await,
            Err(ProviderError::Retryable { .. })
        ));
    }

    #[tokio::test]
    async fn a_feed_that_started_again_is_read_from_its_beginning() {
        // A restarted simulator: feed "new1", two events; the stored cursor is the old feed's.
        let app = Router::new().route(
            "/v1/events",
            get(|q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                let ev = |n: u32| format!(
                    r#"{{"seq":{n},"event_id":"e-new1-{n}","roll_call_id":7,"from":"sim-a","kind":{{"type":"read"}},"occurred_at":"2026-01-01T00:00:00Z"}}"#
                );
                match q.get("after").map(String::as_str) {
                    Some("0") => format!(r#"{{"events":[{},{}],"next":"2","feed":"new1","last":2}}"#, ev(1), ev(2)),
                    Some(a) => format!(r#"{{"events":[],"next":"{a}","feed":"new1","last":2}}"#),
                    None => "{}".into(),
                }
            }),
        );
        let p = provider_for(app).await;
        for stored in ["old9:40", "40"] {
            let batch = p.poll_events(Some(stored), Duration::ZERO).await.unwrap();
            let ids: Vec<&str> = batch.events.iter().map(|e| e.event_id.as_str()).collect();
            assert_eq!(ids, ["e-new1-1", "e-new1-2"], "{stored}");
            assert_eq!(batch.cursor.as_deref(), Some("new1:2"));
        }
        // The same feed, nothing new: no reset.
        let batch = p.poll_events(Some("new1:2"), Duration::ZERO).await.unwrap();
        assert!(batch.events.is_empty());
        assert_eq!(batch.cursor.as_deref(), Some("new1:2"));
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let p = SimulatorProvider::new(url, "t".into(), None, 1);
        assert!(matches!(
            p.send(&message()).await,
            Err(ProviderError::Retryable { after: None, .. })
        ));
    }

    #[tokio::test]
    async fn a_cursor_from_elsewhere_is_refused() {
        let p = SimulatorProvider::new("http://127.0.0.1:9".into(), "t".into(), None, 1);
        assert!(matches!(
            p.poll_events(Some("abc"), Duration::ZERO).await,
            Err(ProviderError::Permanent(_))
        ));
    }

    #[test]
    fn capabilities_and_debug_do_not_leak_the_token() {
        let limit = RateLimit {
            requests: 240,
            per: Duration::from_secs(60),
        };
        let p = SimulatorProvider::new("http://x/".into(), "s3cret".into(), Some(limit), 64);
        assert_eq!(p.name(), "simulator");
        let c = p.capabilities();
        assert!(c.read_receipts && c.buttons && !c.idempotent_sends);
        assert_eq!(c.rate_limit, Some(limit));
        assert_eq!(c.max_in_flight, 64);
        assert!(!format!("{p:?}").contains("s3cret"));
        assert_eq!(p.messages_url, "http://x/v1/messages");
    }
}
